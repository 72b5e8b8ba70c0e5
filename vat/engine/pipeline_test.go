package engine_test

import (
	"context"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/vatcar/vatcar/proto/captp"
	"github.com/vatcar/vatcar/vat/engine"
)

// TestScriptPipelinedOnCancelledQuestion: a call pipelined on
// question Q passes startCall's "not returned" check; before it is encoded,
// Q is cancelled (Finish), its Return comes, Q's id is freed and a new
// question takes it. The pipelined call is then sent to promisedAnswer(id):
// the new question's results.
func TestScriptPipelinedOnCancelledQuestion(t *testing.T) {
	s, c := newScript(t, engine.Options{})
	ctx := ctxT(t)

	boot := captp.GrpcService(s.bootstrapPeer(ctx, c, 7))
	defer boot.Release()
	poll(t, "bootstrap question freed", func() bool { return c.Stats().Questions == 0 })

	qctx, cancelQ := context.WithCancel(ctx)
	fut, relQ := boot.Open(qctx, nil)
	defer relQ()
	qc, _ := s.expect(rpccp.Message_Which_call).Call()
	qid := qc.QuestionId()

	var newBoot capnp.Client
	var reusedID uint32
	pf, relP := fut.Up().Headers(ctx, func(p captp.Sink_headers_Params) error {
		// startCall has checked Q (not returned) and holds order.RLock.
		cancelQ()
		fin, _ := s.expect(rpccp.Message_Which_finish).Finish()
		if fin.QuestionId() != qid {
			t.Errorf("finish of %d, want %d", fin.QuestionId(), qid)
		}
		s.send(func(m rpccp.Message) {
			ret, _ := m.NewReturn()
			ret.SetAnswerId(qid)
			res, _ := ret.NewResults()
			st, _ := capnp.NewStruct(res.Segment(), capnp.ObjectSize{PointerCount: 1})
			_ = res.SetContent(st.ToPtr())
		})
		poll(t, "Q freed", func() bool { return c.Stats().Questions == 0 })
		newBoot = c.Bootstrap(ctx) // a new question: takes the freed id
		b, _ := s.expect(rpccp.Message_Which_bootstrap).Bootstrap()
		reusedID = b.QuestionId()
		return nil
	})
	defer relP()
	defer func() { newBoot.Release() }()
	// Encode is synchronous here: a call sent would already be queued.
	for {
		select {
		case msg := <-s.cc.out:
			m, _ := rpccp.ReadRootMessage(msg)
			if m.Which() == rpccp.Message_Which_call {
				call, _ := m.Call()
				tgt, _ := call.Target()
				pa, _ := tgt.PromisedAnswer()
				t.Fatalf("call pipelined on cancelled question %d was sent (to promisedAnswer %d; %d is now a new Bootstrap)", qid, pa.QuestionId(), reusedID)
			}
			continue
		default:
		}
		break
	}
	if _, err := pf.Struct(); err == nil || !strings.Contains(err.Error(), "cancelled") {
		t.Fatalf("call pipelined on a cancelled question: %v, want it to fail naming the cancel", err)
	}
}

// openWithAnswerSink is the peer's call qid of open on export, whose down
// Sink is receiverAnswer(answer): a pipeline on a call the peer made to
// this side that has not returned.
func openWithAnswerSink(qid, export, answer uint32) func(rpccp.Message) {
	return func(m rpccp.Message) {
		call, _ := m.NewCall()
		call.SetQuestionId(qid)
		call.SetInterfaceId(captp.GrpcService_TypeID)
		call.SetMethodId(1)
		tg, _ := call.NewTarget()
		tg.SetImportedCap(export)
		pl, _ := call.NewParams()
		args, _ := captp.NewGrpcService_open_Params(pl.Segment())
		_ = capnp.Struct(args).SetPtr(1, capnp.NewInterface(pl.Segment(), 0).ToPtr())
		_ = pl.SetContent(args.ToPtr())
		list, _ := pl.NewCapTable(1)
		ra, _ := list.At(0).NewReceiverAnswer()
		ra.SetQuestionId(answer)
	}
}

// keeper is a GrpcService whose open keeps down for later.
type keeper struct{ down chan captp.Sink }

func (k *keeper) Unary(ctx context.Context, call captp.GrpcService_unary) error { return nil }
func (k *keeper) Open(ctx context.Context, call captp.GrpcService_open) error {
	k.down <- call.Args().Down().AddRef()
	return nil
}

// TestScriptReceiverAnswerAfterFinish: the peer passes this side a
// receiverAnswer capability (a pipeline on a call it made to this side that
// has not returned yet). This side keeps it. The answer returns and the
// peer finishes it, which releases the answer's results; a later call on
// the kept capability still reaches the capability the answer returned
// (it once read the released message and went elsewhere).
func TestScriptReceiverAnswerAfterFinish(t *testing.T) {
	rec := &recorder{}
	k := &keeper{down: make(chan captp.Sink, 1)}
	gate := make(chan struct{})
	s, _ := newScript(t, engine.Options{
		Bootstrap: capnp.Client(captp.GrpcService_ServerToClient(k)),
		Restore: func(ctx context.Context, id []byte) (capnp.Client, error) {
			if err := waitGate(ctx, gate); err != nil {
				return capnp.Client{}, err
			}
			return capnp.Client(captp.Sink_ServerToClient(rec)), nil
		},
	})
	ctx := ctxT(t)
	export := s.bootstrapConn(0)
	s.restoreFromConn(1, "svc")
	// open(down = receiverAnswer(1)) on the keeper.
	s.send(openWithAnswerSink(2, export, 1))
	down := <-k.down
	defer down.Release()
	s.expect(rpccp.Message_Which_return) // open's Return (q2)
	close(gate)
	ret, _ := s.expect(rpccp.Message_Which_return).Return()
	if ret.AnswerId() != 1 {
		t.Fatalf("return of %d, want 1", ret.AnswerId())
	}
	for _, q := range []uint32{1, 2} {
		s.send(func(m rpccp.Message) {
			f, _ := m.NewFinish()
			f.SetQuestionId(q)
		})
	}
	// Let the Finishes be handled.
	s.send(func(m rpccp.Message) {
		b, _ := m.NewBootstrap()
		b.SetQuestionId(3)
	})
	s.expect(rpccp.Message_Which_return)
	fut, rel := down.Headers(ctx, headers("late"))
	defer rel()
	if _, err := fut.Struct(); err != nil {
		// Seen: "call on null client", or (the pooled arena reused by
		// another message) "Sink.headers: unimplemented": the call went
		// to some other capability.
		t.Fatalf("call on the kept receiverAnswer capability: %v", err)
	}
	if keys, _ := rec.snapshot(); len(keys) != 1 {
		t.Fatalf("recorder got %v", keys)
	}
}

// TestScriptDisembargoAfterQueuedCalls: calls the peer pipelined on an
// answer are delivered by drainQueued on the returning goroutine. The
// answer resolves to the peer's own capability, so the peer sends a
// Disembargo(senderLoopback) to the answer; it must be reflected after the
// queued call has been reflected back to the peer, or the peer lifts its
// embargo early and E-order breaks. (The receive loop once reflected it at
// once, while the queued call waited; the queued calls now even go before
// the Return, see TestScriptPipelinedThenDirectOrder.)
func TestScriptDisembargoAfterQueuedCalls(t *testing.T) {
	reflected := make(chan struct{})
	var once sync.Once
	var peerCap capnp.Client
	gate := make(chan struct{})
	cc := newChanCodec()
	cc.beforeEncode = func(m rpccp.Message) {
		switch m.Which() {
		case rpccp.Message_Which_disembargo:
			once.Do(func() { close(reflected) })
		case rpccp.Message_Which_call:
			// The queued call being reflected: give the receive loop a
			// moment (the fixed engine must not need it).
			select {
			case <-reflected:
			case <-time.After(time.Second):
			}
		}
	}
	s, c := newScriptOn(t, cc, engine.Options{
		Restore: func(ctx context.Context, id []byte) (capnp.Client, error) {
			if err := waitGate(ctx, gate); err != nil {
				return capnp.Client{}, err
			}
			return peerCap.AddRef(), nil
		},
	})
	ctx := ctxT(t)
	// This side imports the peer's capability 7.
	peerCap = c.Bootstrap(ctx)
	defer peerCap.Release()
	bq, _ := s.expect(rpccp.Message_Which_bootstrap).Bootstrap()
	s.send(func(m rpccp.Message) {
		ret, _ := m.NewReturn()
		ret.SetAnswerId(bq.QuestionId())
		res, _ := ret.NewResults()
		list, _ := res.NewCapTable(1)
		list.At(0).SetSenderHosted(7)
		_ = res.SetContent(capnp.NewInterface(res.Segment(), 0).ToPtr())
	})
	if err := peerCap.Resolve(ctx); err != nil {
		t.Fatal(err)
	}
	// The peer restores "svc" (answer 0, held by gate) and pipelines a
	// call on it.
	s.restoreFromConn(0, "svc")
	s.send(sinkHeadersCall(1, func(t rpccp.MessageTarget) {
		pa, _ := t.NewPromisedAnswer()
		pa.SetQuestionId(0)
	}, "a"))
	close(gate)
	var order []string // the call and the Disembargo, as sent
	var r rpccp.Return
	for r == (rpccp.Return{}) {
		select {
		case msg := <-s.cc.out:
			m, _ := rpccp.ReadRootMessage(msg)
			switch m.Which() {
			case rpccp.Message_Which_return:
				r, _ = m.Return()
			case rpccp.Message_Which_call:
				order = append(order, m.Which().String())
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no Return came")
		}
	}
	p, _ := r.Results()
	ct, _ := p.CapTable()
	if r.AnswerId() != 0 || ct.Len() != 1 || ct.At(0).Which() != rpccp.CapDescriptor_Which_receiverHosted {
		t.Fatalf("return %d, caps %v", r.AnswerId(), ct)
	}
	// The peer embargoes its own capability and sends the Disembargo.
	s.send(func(m rpccp.Message) {
		d, _ := m.NewDisembargo()
		tg, _ := d.NewTarget()
		pa, _ := tg.NewPromisedAnswer()
		pa.SetQuestionId(0)
		d.Context().SetSenderLoopback(42)
	})
	for len(order) < 2 {
		select {
		case msg := <-s.cc.out:
			m, _ := rpccp.ReadRootMessage(msg)
			switch m.Which() {
			case rpccp.Message_Which_call, rpccp.Message_Which_disembargo:
				order = append(order, m.Which().String())
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("got only %v", order)
		}
	}
	if order[0] != "call" {
		t.Fatalf("sent %v: the reflected Disembargo overtook the call queued on the answer", order)
	}
}

// TestScriptReceiverAnswerAfterClose: a receiverAnswer capability kept by
// this side outlives the connection; a call on it after the connection
// ended queues on the dead answer and never returns.
func TestScriptReceiverAnswerAfterClose(t *testing.T) {
	k := &keeper{down: make(chan captp.Sink, 1)}
	s, c := newScript(t, engine.Options{
		Bootstrap: capnp.Client(captp.GrpcService_ServerToClient(k)),
		Restore: func(ctx context.Context, id []byte) (capnp.Client, error) {
			<-ctx.Done()
			return capnp.Client{}, ctx.Err()
		},
	})
	export := s.bootstrapConn(0)
	s.restoreFromConn(1, "svc")
	s.send(openWithAnswerSink(2, export, 1))
	down := <-k.down
	defer down.Release()
	c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	fut, rel := down.Headers(context.Background(), headers("late"))
	select {
	case <-fut.Done():
		rel()
	case <-ctx.Done():
		// rel would wait for the Return forever: leave it.
		t.Fatal("call on a receiverAnswer capability after Close never returned")
	}
}

// TestScriptReceiverAnswerReleasedBeforeReturn: a receiverAnswer
// capability released before its answer returns holds nothing once the
// answer has: the capability the answer returned shuts down with the
// connection.
func TestScriptReceiverAnswerReleasedBeforeReturn(t *testing.T) {
	sink := &shutdownSink{}
	k := &keeper{down: make(chan captp.Sink, 1)}
	gate := make(chan struct{})
	s, c := newScript(t, engine.Options{
		Bootstrap: capnp.Client(captp.GrpcService_ServerToClient(k)),
		Restore: func(ctx context.Context, id []byte) (capnp.Client, error) {
			if err := waitGate(ctx, gate); err != nil {
				return capnp.Client{}, err
			}
			return capnp.Client(captp.Sink_ServerToClient(sink)), nil
		},
	})
	export := s.bootstrapConn(0)
	s.restoreFromConn(1, "svc")
	s.send(openWithAnswerSink(2, export, 1))
	down := <-k.down
	s.expect(rpccp.Message_Which_return) // open's Return (q2)
	down.Release()
	close(gate)
	if ret, _ := s.expect(rpccp.Message_Which_return).Return(); ret.AnswerId() != 1 {
		t.Fatalf("return of %d, want 1", ret.AnswerId())
	}
	for _, q := range []uint32{0, 1, 2} {
		s.send(func(m rpccp.Message) {
			f, _ := m.NewFinish()
			f.SetQuestionId(q)
		})
	}
	s.send(func(m rpccp.Message) {
		r, _ := m.NewRelease()
		r.SetId(export)
		r.SetReferenceCount(1)
	})
	poll(t, "tables empty", zeroStats(c))
	c.Close()
	poll(t, "the restored Sink shut down", func() bool { return sink.shutdowns.Load() == 1 })
}

// TestScriptPipelinedCapAsParam: a capability pipelined on a question to
// the peer, passed back to the peer in a call's params before that
// question returns, goes as receiverAnswer(question, transform): the peer
// resolves it itself and nothing is exported for it.
func TestScriptPipelinedCapAsParam(t *testing.T) {
	s, c := newScript(t, engine.Options{})
	ctx := ctxT(t)
	boot := captp.GrpcService(s.bootstrapPeer(ctx, c, 7))
	defer boot.Release()
	poll(t, "bootstrap question freed", func() bool { return c.Stats().Questions == 0 })

	fut1, rel1 := boot.Open(ctx, nil)
	defer rel1()
	q1, _ := s.expect(rpccp.Message_Which_call).Call()
	fut2, rel2 := boot.Open(ctx, func(p captp.GrpcService_open_Params) error {
		return p.SetDown(fut1.Up().AddRef())
	})
	defer rel2()
	q2, _ := s.expect(rpccp.Message_Which_call).Call()
	params, _ := q2.Params()
	ct, _ := params.CapTable()
	if ct.Len() != 1 || ct.At(0).Which() != rpccp.CapDescriptor_Which_receiverAnswer {
		t.Fatalf("cap table %v, want one receiverAnswer", ct)
	}
	ra, _ := ct.At(0).ReceiverAnswer()
	tr, _ := ra.Transform()
	if ra.QuestionId() != q1.QuestionId() || tr.Len() != 1 || tr.At(0).Which() != rpccp.PromisedAnswer_Op_Which_getPointerField || tr.At(0).GetPointerField() != 0 {
		t.Fatalf("receiverAnswer(%d, %d ops), want (%d, [getPointerField 0])", ra.QuestionId(), tr.Len(), q1.QuestionId())
	}
	if st := c.Stats(); st.Exports != 0 || st.Questions != 2 {
		t.Errorf("Stats() = %+v, want two questions and no export", st)
	}
	for _, q := range []uint32{q1.QuestionId(), q2.QuestionId()} {
		s.send(func(m rpccp.Message) {
			ret, _ := m.NewReturn()
			ret.SetAnswerId(q)
			ex, _ := ret.NewException()
			_ = ex.SetReason("no")
		})
	}
	if _, err := fut2.Struct(); err == nil {
		t.Error("the second open succeeded; the peer failed it")
	}
	poll(t, "both questions finished", func() bool { st := c.Stats(); return st.Questions == 0 && st.Exports == 0 })
}

// TestScriptPipelinedThenDirectOrder: the peer pipelines call "a" on an
// answer that has not returned, then, once it has the Return, calls the
// returned capability directly ("b"). E-order wants a before b at the
// target. The returning goroutine is held just after its Return is queued
// (a writer descheduled after its write): the engine once delivered the
// queued calls only after sending the Return, so b overtook a. (Found by a
// review.)
func TestScriptPipelinedThenDirectOrder(t *testing.T) {
	rec := &recorder{}
	gate := make(chan struct{})
	proceed := make(chan struct{})
	cc := newChanCodec()
	cc.afterEncode = func(m rpccp.Message) {
		if m.Which() != rpccp.Message_Which_return {
			return
		}
		if r, err := m.Return(); err != nil || r.AnswerId() != 0 {
			return
		}
		select {
		case <-proceed:
		case <-time.After(5 * time.Second):
		}
	}
	s, _ := newScriptOn(t, cc, engine.Options{Restore: func(ctx context.Context, id []byte) (capnp.Client, error) {
		if err := waitGate(ctx, gate); err != nil {
			return capnp.Client{}, err
		}
		return capnp.Client(captp.Sink_ServerToClient(rec)), nil
	}})
	s.restoreFromConn(0, "svc")
	s.send(sinkHeadersCall(1, func(t rpccp.MessageTarget) {
		pa, _ := t.NewPromisedAnswer()
		pa.SetQuestionId(0)
	}, "a"))
	close(gate)
	r, _ := s.expect(rpccp.Message_Which_return).Return()
	if r.AnswerId() != 0 { // a's own Return may come first
		r, _ = s.expect(rpccp.Message_Which_return).Return()
	}
	p, _ := r.Results()
	ct, _ := p.CapTable()
	if r.AnswerId() != 0 || ct.Len() != 1 || ct.At(0).Which() != rpccp.CapDescriptor_Which_senderHosted {
		t.Fatalf("return for answer %d, caps %v: want the restore's, one senderHosted", r.AnswerId(), ct)
	}
	s.send(sinkHeadersCall(2, func(t rpccp.MessageTarget) { t.SetImportedCap(ct.At(0).SenderHosted()) }, "b"))
	// Give b every chance to overtake while the returning goroutine is
	// held: wait for a first delivery (or 2 s), then let it go on.
	deadline := time.Now().Add(2 * time.Second)
	for keys, _ := rec.snapshot(); len(keys) == 0 && time.Now().Before(deadline); keys, _ = rec.snapshot() {
		runtime.Gosched()
	}
	close(proceed)
	deadline = time.Now().Add(30 * time.Second)
	for keys, _ := rec.snapshot(); len(keys) < 2; keys, _ = rec.snapshot() {
		if time.Now().After(deadline) {
			t.Fatalf("target got only %v", keys)
		}
		runtime.Gosched()
	}
	if keys, _ := rec.snapshot(); strings.Join(keys, "") != "ab" {
		t.Fatalf("target got %v, want a then b: the direct call overtook the call pipelined before the Return", keys)
	}
}
