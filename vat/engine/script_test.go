package engine_test

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/vatcar/vatcar/proto/captp"
	"github.com/vatcar/vatcar/vat/engine"
)

// chanCodec connects a Conn to a test that plays the peer message by
// message.
type chanCodec struct {
	in     chan any            // to the Conn: a *capnp.Message, or an error for Decode
	out    chan *capnp.Message // from the Conn
	closed chan struct{}
	once   sync.Once
	// beforeEncode, if set, sees each message the Conn sends before it
	// is queued (set before the Conn starts).
	beforeEncode func(rpccp.Message)
	// afterEncode, if set, sees each message after it is queued (set
	// before the Conn starts): a writer descheduled after its write.
	afterEncode func(rpccp.Message)
}

func newChanCodec() *chanCodec {
	return &chanCodec{in: make(chan any, 64), out: make(chan *capnp.Message, 64), closed: make(chan struct{})}
}

func (c *chanCodec) Encode(m *capnp.Message) error {
	if c.beforeEncode != nil {
		if rm, err := rpccp.ReadRootMessage(m); err == nil {
			c.beforeEncode(rm)
		}
	}
	b, err := m.Marshal()
	if err != nil {
		return err
	}
	cp, err := capnp.Unmarshal(b)
	if err != nil {
		return err
	}
	select {
	case c.out <- cp:
		if c.afterEncode != nil {
			if rm, err := rpccp.ReadRootMessage(cp); err == nil {
				c.afterEncode(rm)
			}
		}
		return nil
	case <-c.closed:
		return io.ErrClosedPipe
	}
}

func (c *chanCodec) Decode() (*capnp.Message, error) {
	select {
	case v := <-c.in:
		if err, ok := v.(error); ok {
			return nil, err
		}
		return v.(*capnp.Message), nil
	case <-c.closed:
		return nil, io.EOF
	}
}

func (c *chanCodec) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

// script is the test's side of a chanCodec.
type script struct {
	t  *testing.T
	cc *chanCodec
}

func (s script) send(build func(m rpccp.Message)) {
	s.t.Helper()
	msg, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		s.t.Fatal(err)
	}
	m, err := rpccp.NewRootMessage(seg)
	if err != nil {
		s.t.Fatal(err)
	}
	build(m)
	select {
	case s.cc.in <- msg:
	case <-s.cc.closed:
		// The Conn ended and reads no more: the message is dropped (a
		// test waiting for an answer to it fails at its expect, instead
		// of hanging here).
		msg.Release()
	}
}

// expect returns the next message the Conn sends, skipping Finish and
// Release messages unless asked for them.
func (s script) expect(which rpccp.Message_Which) rpccp.Message {
	s.t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case msg := <-s.cc.out:
			m, err := rpccp.ReadRootMessage(msg)
			if err != nil {
				s.t.Fatal(err)
			}
			if m.Which() == which {
				return m
			}
			if m.Which() == rpccp.Message_Which_finish || m.Which() == rpccp.Message_Which_release {
				continue
			}
			s.t.Fatalf("got %v, want %v", m.Which(), which)
		case <-deadline:
			s.t.Fatalf("no %v came", which)
		}
	}
}

func newScript(t *testing.T, opts engine.Options) (script, *engine.Conn) {
	return newScriptOn(t, newChanCodec(), opts)
}

// newScriptOn is newScript on cc.
func newScriptOn(t *testing.T, cc *chanCodec, opts engine.Options) (script, *engine.Conn) {
	c := engine.NewConn(cc, &opts)
	t.Cleanup(func() { c.Close() })
	return script{t: t, cc: cc}, c
}

func sinkHeadersCall(qid uint32, target func(rpccp.MessageTarget), key string) func(rpccp.Message) {
	return func(m rpccp.Message) {
		call, _ := m.NewCall()
		call.SetQuestionId(qid)
		call.SetInterfaceId(captp.Sink_TypeID)
		call.SetMethodId(0)
		t, _ := call.NewTarget()
		target(t)
		p, _ := call.NewParams()
		args, _ := captp.NewSink_headers_Params(p.Segment())
		md, _ := args.NewMd(1)
		_ = md.At(0).SetKey(key)
		_ = p.SetContent(args.ToPtr())
	}
}

// TestScriptPipelinedBeforeReturn: calls pipelined on a Bootstrap whose
// restore is still running are delivered, in order, once it returns; after
// the Finishes and the Release every table is empty.
func TestScriptPipelinedBeforeReturn(t *testing.T) {
	rec := &recorder{}
	gate := make(chan struct{})
	s, c := newScript(t, engine.Options{Restore: func(ctx context.Context, id []byte) (capnp.Client, error) {
		if err := waitGate(ctx, gate); err != nil {
			return capnp.Client{}, err
		}
		return capnp.Client(captp.Sink_ServerToClient(rec)), nil
	}})
	s.restoreFromConn(0, "svc")
	for i, k := range []string{"a", "b", "c"} {
		s.send(sinkHeadersCall(uint32(i+1), func(t rpccp.MessageTarget) {
			pa, _ := t.NewPromisedAnswer()
			pa.SetQuestionId(0)
		}, k))
	}
	close(gate)
	// Four Returns, in any order: the pipelined calls are delivered
	// before the restore's Return is sent, so theirs may come first.
	var export uint32
	seen := map[uint32]bool{}
	for len(seen) < 4 {
		r, _ := s.expect(rpccp.Message_Which_return).Return()
		if seen[r.AnswerId()] || r.AnswerId() > 3 || r.Which() != rpccp.Return_Which_results {
			t.Fatalf("return for answer %d (%v), seen %v", r.AnswerId(), r.Which(), seen)
		}
		seen[r.AnswerId()] = true
		if r.AnswerId() != 0 {
			continue
		}
		p, _ := r.Results()
		ct, _ := p.CapTable()
		if ct.Len() != 1 || ct.At(0).Which() != rpccp.CapDescriptor_Which_senderHosted {
			t.Fatalf("bootstrap results cap table %v", ct)
		}
		export = ct.At(0).SenderHosted()
	}
	// A call straight to the export now.
	s.send(sinkHeadersCall(4, func(t rpccp.MessageTarget) { t.SetImportedCap(export) }, "d"))
	s.expect(rpccp.Message_Which_return)
	keys, _ := rec.snapshot()
	if got := strings.Join(keys, ""); got != "abcd" {
		t.Fatalf("delivered %q, want abcd", got)
	}
	for q := uint32(0); q <= 4; q++ {
		s.send(func(m rpccp.Message) {
			f, _ := m.NewFinish()
			f.SetQuestionId(q)
			f.SetReleaseResultCaps(false)
		})
	}
	s.send(func(m rpccp.Message) {
		r, _ := m.NewRelease()
		r.SetId(export)
		r.SetReferenceCount(1)
	})
	poll(t, "tables empty", zeroStats(c))
}

// TestScriptFinishCancelsHandler: a Finish before the Return cancels the
// running handler; its Return still comes, and the tables empty.
func TestScriptFinishCancelsHandler(t *testing.T) {
	svc := &service{cancelled: make(chan struct{})}
	s, c := newScript(t, engine.Options{Bootstrap: capnp.Client(captp.GrpcService_ServerToClient(svc))})
	export := s.bootstrapConn(0)
	s.send(func(m rpccp.Message) {
		call, _ := m.NewCall()
		call.SetQuestionId(1)
		call.SetInterfaceId(captp.GrpcService_TypeID)
		call.SetMethodId(0)
		t, _ := call.NewTarget()
		t.SetImportedCap(export)
		p, _ := call.NewParams()
		args, _ := captp.NewGrpcService_unary_Params(p.Segment())
		head, _ := args.NewCall()
		_ = head.SetMethod("block")
		_ = p.SetContent(args.ToPtr())
	})
	s.send(func(m rpccp.Message) {
		f, _ := m.NewFinish()
		f.SetQuestionId(1)
		f.SetReleaseResultCaps(true)
	})
	select {
	case <-svc.cancelled:
	case <-time.After(30 * time.Second):
		t.Fatal("handler not cancelled by Finish")
	}
	r2, _ := s.expect(rpccp.Message_Which_return).Return()
	if r2.AnswerId() != 1 || r2.Which() != rpccp.Return_Which_exception {
		t.Fatalf("return %d %v, want answer 1 exception", r2.AnswerId(), r2.Which())
	}
	s.send(func(m rpccp.Message) {
		f, _ := m.NewFinish()
		f.SetQuestionId(0)
	})
	s.send(func(m rpccp.Message) {
		r, _ := m.NewRelease()
		r.SetId(export)
		r.SetReferenceCount(1)
	})
	poll(t, "tables empty", zeroStats(c))
}

// TestScriptUnimplementedAndAbort: a level 3 message comes back as
// Unimplemented; releasing an export the peer does not hold is a protocol
// violation: the Conn aborts with a reason and ends.
func TestScriptUnimplementedAndAbort(t *testing.T) {
	s, c := newScript(t, engine.Options{})
	s.send(func(m rpccp.Message) {
		p, _ := m.NewProvide()
		p.SetQuestionId(7)
	})
	u, _ := s.expect(rpccp.Message_Which_unimplemented).Unimplemented()
	if u.Which() != rpccp.Message_Which_provide {
		t.Fatalf("unimplemented echoes %v", u.Which())
	}
	s.send(func(m rpccp.Message) {
		r, _ := m.NewRelease()
		r.SetId(3)
		r.SetReferenceCount(1)
	})
	ab, _ := s.expect(rpccp.Message_Which_abort).Abort()
	if reason, _ := ab.Reason(); !strings.Contains(reason, "Release") {
		t.Fatalf("abort reason %q", reason)
	}
	select {
	case <-c.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("conn did not end after the abort")
	}
	if c.Err() == nil || !strings.Contains(c.Err().Error(), "protocol violation") {
		t.Fatalf("Err() = %v", c.Err())
	}
}

// TestScriptPeerAbort: the peer's Abort ends the connection with its
// reason; a call in flight fails.
func TestScriptPeerAbort(t *testing.T) {
	s, c := newScript(t, engine.Options{})
	boot := c.Bootstrap(context.Background())
	defer boot.Release()
	s.expect(rpccp.Message_Which_bootstrap)
	s.send(func(m rpccp.Message) {
		e, _ := m.NewAbort()
		_ = e.SetReason("going away")
	})
	select {
	case <-c.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("conn did not end")
	}
	if err := boot.Resolve(context.Background()); err != nil {
		t.Fatal(err)
	}
	fut, rel := captp.Sink(boot).Headers(context.Background(), nil)
	defer rel()
	if _, err := fut.Struct(); err == nil || !strings.Contains(err.Error(), "going away") {
		t.Fatalf("call after abort: %v", err)
	}
}

// TestScriptEOrderAcrossResolve: the peer's promise resolves to this
// side's own capability. A call sent to the promise before the Resolve
// loops back through the peer; a call made after it waits (embargo) until
// the Disembargo comes back, so the two arrive in order.
func TestScriptEOrderAcrossResolve(t *testing.T) {
	rec := &recorder{}
	s, c := newScript(t, engine.Options{Bootstrap: capnp.Client(captp.Sink_ServerToClient(rec))})
	ctx := ctxT(t)

	// The peer learns this side's Sink (export e).
	export := s.bootstrapConn(0)

	// This side bootstraps the peer, which answers with a promise (import 9).
	boot := captp.Sink(c.Bootstrap(ctx))
	defer boot.Release()
	bq, _ := s.expect(rpccp.Message_Which_bootstrap).Bootstrap()
	s.send(func(m rpccp.Message) {
		ret, _ := m.NewReturn()
		ret.SetAnswerId(bq.QuestionId())
		res, _ := ret.NewResults()
		list, _ := res.NewCapTable(1)
		list.At(0).SetSenderPromise(9)
		_ = res.SetContent(capnp.NewInterface(res.Segment(), 0).ToPtr())
	})
	poll(t, "the bootstrap to return", func() bool { return c.Stats().Questions == 0 })
	// Call a goes to the promise on the wire.
	_, relA := boot.Headers(ctx, headers("a"))
	defer relA()
	call, _ := s.expect(rpccp.Message_Which_call).Call()
	tgt, _ := call.Target()
	if tgt.Which() != rpccp.MessageTarget_Which_importedCap || tgt.ImportedCap() != 9 {
		t.Fatalf("call a went to %v", tgt)
	}
	// The promise resolves to this side's Sink.
	s.send(func(m rpccp.Message) {
		res, _ := m.NewResolve()
		res.SetPromiseId(9)
		d, _ := res.NewCap()
		d.SetReceiverHosted(export)
	})
	dm, _ := s.expect(rpccp.Message_Which_disembargo).Disembargo()
	if dm.Context().Which() != rpccp.Disembargo_context_Which_senderLoopback {
		t.Fatalf("disembargo %v", dm.Context().Which())
	}
	// Call b, made now, must wait for a (without the embargo it would
	// reach the Sink before the peer reflects a).
	fb, relB := boot.Headers(ctx, headers("b"))
	defer relB()
	// The peer reflects call a back, then the Disembargo.
	s.send(sinkHeadersCall(5, func(t rpccp.MessageTarget) { t.SetImportedCap(export) }, "a"))
	s.send(func(m rpccp.Message) {
		d, _ := m.NewDisembargo()
		t, _ := d.NewTarget()
		t.SetImportedCap(export)
		d.Context().SetReceiverLoopback(dm.Context().SenderLoopback())
	})
	if _, err := fb.Struct(); err != nil {
		t.Fatal(err)
	}
	if keys, _ := rec.snapshot(); strings.Join(keys, "") != "ab" {
		t.Fatalf("delivered %v, want a then b", keys)
	}
}

// restoreFromConn plays the peer sending Bootstrap qid to the Conn (with
// an object id, OCaml's restore, unless id is empty) without waiting.
func (s script) restoreFromConn(qid uint32, id string) {
	s.send(func(m rpccp.Message) {
		b, _ := m.NewBootstrap()
		b.SetQuestionId(qid)
		if id != "" {
			txt, _ := capnp.NewText(b.Segment(), id)
			_ = b.SetDeprecatedObjectId(txt.ToPtr())
		}
	})
}

// bootstrapConn plays the peer bootstrapping the Conn with question qid
// and returns the export id of the capability it gets.
func (s script) bootstrapConn(qid uint32) uint32 {
	s.t.Helper()
	s.restoreFromConn(qid, "")
	r, _ := s.expect(rpccp.Message_Which_return).Return()
	p, _ := r.Results()
	ct, _ := p.CapTable()
	if r.AnswerId() != qid || ct.Len() != 1 || ct.At(0).Which() != rpccp.CapDescriptor_Which_senderHosted {
		s.t.Fatalf("bootstrap %d: return %d, cap table %v", qid, r.AnswerId(), ct)
	}
	return ct.At(0).SenderHosted()
}

// bootstrapPeer has the Conn bootstrap the peer, which answers with its
// capability id; it returns the resolved client.
func (s script) bootstrapPeer(ctx context.Context, c *engine.Conn, id uint32) capnp.Client {
	s.t.Helper()
	boot := c.Bootstrap(ctx)
	bq, _ := s.expect(rpccp.Message_Which_bootstrap).Bootstrap()
	s.send(func(m rpccp.Message) {
		ret, _ := m.NewReturn()
		ret.SetAnswerId(bq.QuestionId())
		res, _ := ret.NewResults()
		list, _ := res.NewCapTable(1)
		list.At(0).SetSenderHosted(id)
		_ = res.SetContent(capnp.NewInterface(res.Segment(), 0).ToPtr())
	})
	if err := boot.Resolve(ctx); err != nil {
		s.t.Fatal(err)
	}
	return boot
}

// waitGate holds a test's restore until gate opens or the restore's
// context ends: shutdown waits for running restores, so a test that fails
// before it opens its gate would hang there instead of reporting.
func waitGate(ctx context.Context, gate <-chan struct{}) error {
	select {
	case <-gate:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
