package engine_test

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/vatcar/vatcar/internal/cputime"
	"github.com/vatcar/vatcar/proto/captp"
	"github.com/vatcar/vatcar/vat/engine"
)

var (
	unaryMethod     = captp.GrpcService_Methods(nil, nil)[0].Method
	unaryParamsSize = capnp.ObjectSize{PointerCount: 2}
)

// unaryParams places unary params whose call head names method and whose
// request is req.
func unaryParams(method, req string) func(capnp.Struct) error {
	return func(s capnp.Struct) error {
		p := captp.GrpcService_unary_Params(s)
		h, err := p.NewCall()
		if err != nil {
			return err
		}
		if err := h.SetMethod(method); err != nil {
			return err
		}
		return p.SetRequest([]byte(req))
	}
}

// callDirect is engine.CallDirect of GrpcService.unary.
func callDirect(ctx context.Context, cl capnp.Client, method, req string) (engine.Results, error) {
	return engine.CallDirect(ctx, cl, unaryMethod, unaryParamsSize, unaryParams(method, req), 0)
}

// callNormal is the same call through go-capnp's client machinery: the
// reply's message (or "rest" if the results hold a capability), or the
// error.
func callNormal(ctx context.Context, cl capnp.Client, method, req string) (string, error) {
	fut, rel := captp.GrpcService(cl).Unary(ctx, func(p captp.GrpcService_unary_Params) error {
		return unaryParams(method, req)(capnp.Struct(p))
	})
	defer rel()
	res, err := fut.Struct()
	if err != nil {
		return "", err
	}
	return replyOf(res), nil
}

func replyOf(res captp.GrpcService_unary_Results) string {
	if res.HasRest() {
		return "rest"
	}
	r, _ := res.Reply()
	b, _ := r.Message_()
	return string(b)
}

// directReply is callDirect's reply as callNormal gives it, and whether the
// call took the direct path.
func directReply(ctx context.Context, cl capnp.Client, method, req string) (string, bool, error) {
	out, err := callDirect(ctx, cl, method, req)
	if err != nil {
		return "", false, err
	}
	defer out.Release()
	return replyOf(captp.GrpcService_unary_Results(out.Struct())), out.Direct(), nil
}

// directService is a GrpcService: unary "echo" echoes, "fail" fails with
// an Overloaded exception, "block" waits for its context, "rest" answers
// with a Call capability in rest.
type directService struct {
	started   chan struct{} // closed when "block" starts
	cancelled chan struct{}
	callGone  chan struct{} // closed when the rest Call is shut down
}

func (s *directService) Unary(ctx context.Context, call captp.GrpcService_unary) error {
	head, _ := call.Args().Call()
	m, _ := head.Method()
	switch m {
	case "block":
		call.Go()
		close(s.started)
		<-ctx.Done()
		close(s.cancelled)
		return ctx.Err()
	case "fail":
		return exc.New(exc.Overloaded, "", "too busy")
	case "rest":
		res, err := call.AllocResults()
		if err != nil {
			return err
		}
		return res.SetRest(captp.Call_ServerToClient(&restCall{gone: s.callGone}))
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	reply, err := res.NewReply()
	if err != nil {
		return err
	}
	req, _ := call.Args().Request()
	return reply.SetMessage_(append([]byte("echo:"), req...))
}

func (s *directService) Open(ctx context.Context, call captp.GrpcService_open) error {
	return exc.New(exc.Unimplemented, "", "no open")
}

type restCall struct{ gone chan struct{} }

func (c *restCall) Attach(ctx context.Context, call captp.Call_attach) error { return nil }
func (c *restCall) Shutdown()                                                { close(c.gone) }

// directRestorer restores "svc" to its service.
type directRestorer struct{ svc *directService }

func (r *directRestorer) Restore(ctx context.Context, call captp.Restorer_restore) error {
	id, _ := call.Args().Id()
	if string(id) != "svc" {
		return exc.New(exc.Failed, "", unknownText)
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetCap(capnp.Client(captp.GrpcService_ServerToClient(r.svc)))
}

// TestCallDirectEngines: over real connections, to a go-capnp server and
// to the engine, CallDirect on a restored capability takes the direct path
// and gives what the normal path gives: replies, exceptions, capabilities
// in the results, cancellation (the server's handler is cancelled); the
// tables empty afterwards.
func TestCallDirectEngines(t *testing.T) {
	for _, s := range setups {
		if s.name == "gocapnp-to-engine" {
			continue // the client is go-capnp's: nothing direct
		}
		t.Run(s.name, func(t *testing.T) {
			ctx := ctxT(t)
			impl := &directService{started: make(chan struct{}), cancelled: make(chan struct{}), callGone: make(chan struct{})}
			cl, cc, sc := s.make(t, capnp.Client(captp.Restorer_ServerToClient(&directRestorer{impl})))
			r := captp.Restorer(cl.bootstrap(ctx))
			fut, rel := r.Restore(ctx, func(p captp.Restorer_restore_Params) error { return p.SetId([]byte("svc")) })
			res, err := fut.Struct()
			if err != nil {
				t.Fatal(err)
			}
			svc := res.Cap().AddRef()
			rel()
			r.Release()

			got, direct, err := directReply(ctx, capnp.Client(svc), "m", "hi")
			if err != nil || !direct || got != "echo:hi" {
				t.Fatalf("echo: %q direct=%v %v", got, direct, err)
			}
			if normal, err := callNormal(ctx, capnp.Client(svc), "m", "hi"); err != nil || normal != got {
				t.Fatalf("normal echo: %q %v", normal, err)
			}

			_, _, derr := directReply(ctx, capnp.Client(svc), "fail", "")
			_, nerr := callNormal(ctx, capnp.Client(svc), "fail", "")
			if derr == nil || derr.Error() != nerr.Error() || exc.TypeOf(derr) != exc.Overloaded {
				t.Fatalf("fail: direct error %v, normal %v", derr, nerr)
			}

			out, err := callDirect(ctx, capnp.Client(svc), "rest", "")
			if err != nil || !out.Direct() {
				t.Fatalf("rest: direct=%v %v", out.Direct(), err)
			}
			ur := captp.GrpcService_unary_Results(out.Struct())
			if !ur.HasRest() {
				t.Fatal("rest: no capability in the results")
			}
			rest := ur.Rest().AddRef()
			out.Release()
			af, arel := rest.Attach(ctx, nil)
			if _, err := af.Struct(); err != nil {
				t.Fatalf("attach on rest: %v", err)
			}
			arel()
			rest.Release()
			select {
			case <-impl.callGone:
			case <-time.After(30 * time.Second):
				t.Fatal("the rest Call was not released on the server")
			}

			cctx, cancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() {
				_, _, err := directReply(cctx, capnp.Client(svc), "block", "")
				done <- err
			}()
			<-impl.started
			cancel()
			select {
			case <-impl.cancelled:
			case <-time.After(30 * time.Second):
				t.Fatal("the server's handler was not cancelled")
			}
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Fatalf("cancelled call: %v", err)
			}

			svc.Release()
			poll(t, "client tables empty", zeroStats(cc))
			poll(t, "server tables empty", zeroStats(sc))
		})
	}
}

// TestScriptCallDirect: a direct call goes to the import as a Call with a
// question id; after the Return the Finish goes out and the id is used
// again by the next call; results and exceptions are what the normal path
// gives.
func TestScriptCallDirect(t *testing.T) {
	s, c := newScript(t, engine.Options{})
	ctx := ctxT(t)
	boot := s.bootstrapPeer(ctx, c, 7)
	defer boot.Release()
	poll(t, "the bootstrap question to be freed", func() bool { return c.Stats().Questions == 0 })

	var firstID uint32
	for i, want := range []string{"a", "b", "c"} {
		type result struct {
			reply  string
			direct bool
			err    error
		}
		done := make(chan result, 1)
		go func() {
			r, d, err := directReply(ctx, boot, "m", want)
			done <- result{r, d, err}
		}()
		call, _ := s.expect(rpccp.Message_Which_call).Call()
		tgt, _ := call.Target()
		if tgt.Which() != rpccp.MessageTarget_Which_importedCap || tgt.ImportedCap() != 7 {
			t.Fatalf("call %d went to %v", i, tgt)
		}
		if call.InterfaceId() != captp.GrpcService_TypeID || call.MethodId() != 0 {
			t.Fatalf("call %d is %x.%d", i, call.InterfaceId(), call.MethodId())
		}
		qid := call.QuestionId()
		if i == 0 {
			firstID = qid
		} else if qid != firstID {
			t.Fatalf("call %d has question %d, want the freed %d", i, qid, firstID)
		}
		p, _ := call.Params()
		content, _ := p.Content()
		req, _ := captp.GrpcService_unary_Params(content.Struct()).Request()
		s.send(func(m rpccp.Message) {
			ret, _ := m.NewReturn()
			ret.SetAnswerId(qid)
			res, _ := ret.NewResults()
			ur, _ := captp.NewGrpcService_unary_Results(res.Segment())
			rep, _ := ur.NewReply()
			_ = rep.SetMessage_(append([]byte("r:"), req...))
			_ = res.SetContent(ur.ToPtr())
		})
		got := <-done
		if got.err != nil || got.reply != "r:"+want || !got.direct {
			t.Fatalf("call %d: %q direct=%v %v, want %q direct", i, got.reply, got.direct, got.err, "r:"+want)
		}
		fin, _ := s.expect(rpccp.Message_Which_finish).Finish()
		if fin.QuestionId() != qid || fin.ReleaseResultCaps() {
			t.Fatalf("finish %d (releaseResultCaps %v), want %d without", fin.QuestionId(), fin.ReleaseResultCaps(), qid)
		}
		poll(t, "the question to be freed", func() bool { return c.Stats().Questions == 0 })
	}

	// An exception: the same error as the normal path's, type included.
	errs := make([]error, 2)
	for i, direct := range []bool{true, false} {
		done := callEither(ctx, boot, direct)
		call, _ := s.expect(rpccp.Message_Which_call).Call()
		s.send(func(m rpccp.Message) {
			ret, _ := m.NewReturn()
			ret.SetAnswerId(call.QuestionId())
			e, _ := ret.NewException()
			e.SetType(rpccp.Exception_Type_overloaded)
			_ = e.SetReason("too busy")
		})
		errs[i] = <-done
		s.expect(rpccp.Message_Which_finish)
	}
	if errs[0] == nil || errs[0].Error() != errs[1].Error() || exc.TypeOf(errs[0]) != exc.TypeOf(errs[1]) || exc.TypeOf(errs[0]) != exc.Overloaded {
		t.Fatalf("direct error %v (%v), normal %v (%v)", errs[0], exc.TypeOf(errs[0]), errs[1], exc.TypeOf(errs[1]))
	}
	poll(t, "questions freed", func() bool { return c.Stats().Questions == 0 })
}

// TestScriptCallDirectCancel: the caller's context ends before the
// Return: the peer gets the Finish that cancels (releaseResultCaps), the
// call fails as a normal call does, and the id is freed once the Return
// comes.
func TestScriptCallDirectCancel(t *testing.T) {
	s, c := newScript(t, engine.Options{})
	ctx := ctxT(t)
	boot := s.bootstrapPeer(ctx, c, 7)
	defer boot.Release()
	errs := make([]error, 2)
	for i, direct := range []bool{true, false} {
		cctx, cancel := context.WithCancel(ctx)
		done := callEither(cctx, boot, direct)
		call, _ := s.expect(rpccp.Message_Which_call).Call()
		cancel()
		fin, _ := s.expect(rpccp.Message_Which_finish).Finish()
		if fin.QuestionId() != call.QuestionId() || !fin.ReleaseResultCaps() {
			t.Fatalf("finish %d (releaseResultCaps %v), want %d with", fin.QuestionId(), fin.ReleaseResultCaps(), call.QuestionId())
		}
		errs[i] = <-done
		if c.Stats().Questions != 1 {
			t.Fatalf("%d questions before the Return, want 1", c.Stats().Questions)
		}
		s.send(func(m rpccp.Message) {
			ret, _ := m.NewReturn()
			ret.SetAnswerId(call.QuestionId())
			ret.SetCanceled()
		})
		poll(t, "the question to be freed", func() bool { return c.Stats().Questions == 0 })
	}
	if !errors.Is(errs[0], context.Canceled) || errs[0].Error() != errs[1].Error() {
		t.Fatalf("direct error %v, normal %v", errs[0], errs[1])
	}
}

// TestScriptCallDirectConnectionLost: the connection ends under a direct
// call and a normal one: both fail with the same error.
func TestScriptCallDirectConnectionLost(t *testing.T) {
	s, c := newScript(t, engine.Options{})
	ctx := ctxT(t)
	boot := s.bootstrapPeer(ctx, c, 7)
	defer boot.Release()
	direct := make(chan error, 1)
	go func() {
		_, _, err := directReply(ctx, boot, "m", "x")
		direct <- err
	}()
	s.expect(rpccp.Message_Which_call)
	normal := make(chan error, 1)
	go func() {
		_, err := callNormal(ctx, boot, "m", "x")
		normal <- err
	}()
	s.expect(rpccp.Message_Which_call)
	s.cc.in <- io.ErrUnexpectedEOF
	derr, nerr := <-direct, <-normal
	if derr == nil || derr.Error() != nerr.Error() || !strings.Contains(derr.Error(), "connection lost") || exc.TypeOf(derr) != exc.Disconnected {
		t.Fatalf("direct error %v, normal %v", derr, nerr)
	}
	// And a call after the end fails alike, at once.
	_, _, derr = directReply(ctx, boot, "m", "x")
	_, nerr = callNormal(ctx, boot, "m", "x")
	if derr == nil || derr.Error() != nerr.Error() {
		t.Fatalf("after the end: direct error %v, normal %v", derr, nerr)
	}
}

// TestScriptCallDirectResultCaps: a Return whose results hold a capability
// (a unary reply that streams: rest): the results' cap table is filled as
// the normal path fills it (MaxImports counted), the capability works,
// and releasing the results (and the reference taken) gives it back.
func TestScriptCallDirectResultCaps(t *testing.T) {
	s, c := newScript(t, engine.Options{})
	ctx := ctxT(t)
	boot := s.bootstrapPeer(ctx, c, 7)
	defer boot.Release()
	type result struct {
		out engine.Results
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := callDirect(ctx, boot, "m", "x")
		done <- result{out, err}
	}()
	call, _ := s.expect(rpccp.Message_Which_call).Call()
	s.send(func(m rpccp.Message) {
		ret, _ := m.NewReturn()
		ret.SetAnswerId(call.QuestionId())
		res, _ := ret.NewResults()
		list, _ := res.NewCapTable(1)
		list.At(0).SetSenderHosted(11)
		ur, _ := captp.NewGrpcService_unary_Results(res.Segment())
		_ = capnp.Struct(ur).SetPtr(1, capnp.NewInterface(res.Segment(), 0).ToPtr())
		_ = res.SetContent(ur.ToPtr())
	})
	got := <-done
	if got.err != nil || !got.out.Direct() {
		t.Fatalf("call: direct=%v %v", got.out.Direct(), got.err)
	}
	res := captp.GrpcService_unary_Results(got.out.Struct())
	if !res.HasRest() {
		t.Fatal("no rest in the results")
	}
	rest := res.Rest().AddRef()
	if st := c.Stats(); st.Imports != 2 {
		t.Fatalf("imports %d, want 2 (the bootstrap's and rest)", st.Imports)
	}
	// A call on rest goes to import 11.
	af, arel := rest.Attach(ctx, nil)
	ac, _ := s.expect(rpccp.Message_Which_call).Call()
	if tgt, _ := ac.Target(); tgt.ImportedCap() != 11 {
		t.Fatalf("attach went to import %d", tgt.ImportedCap())
	}
	s.send(func(m rpccp.Message) {
		ret, _ := m.NewReturn()
		ret.SetAnswerId(ac.QuestionId())
		res, _ := ret.NewResults()
		st, _ := captp.NewCall_attach_Results(res.Segment())
		_ = res.SetContent(st.ToPtr())
	})
	if _, err := af.Struct(); err != nil {
		t.Fatal(err)
	}
	arel()
	got.out.Release()
	rest.Release()
	rel, _ := s.expect(rpccp.Message_Which_release).Release()
	if rel.Id() != 11 || rel.ReferenceCount() != 1 {
		t.Fatalf("release %d x%d, want 11 x1", rel.Id(), rel.ReferenceCount())
	}
	poll(t, "rest's import dropped, questions freed", func() bool {
		st := c.Stats()
		return st.Imports == 1 && st.Questions == 0
	})
}

// TestScriptCallDirectMaxImports: a Return over MaxImports fails the
// direct call as it fails a normal one, and the connection lives.
func TestScriptCallDirectMaxImports(t *testing.T) {
	s, c := newScript(t, engine.Options{MaxImports: 1})
	ctx := ctxT(t)
	boot := s.bootstrapPeer(ctx, c, 7)
	defer boot.Release()
	errs := make([]error, 2)
	for i, direct := range []bool{true, false} {
		done := callEither(ctx, boot, direct)
		call, _ := s.expect(rpccp.Message_Which_call).Call()
		s.send(func(m rpccp.Message) {
			ret, _ := m.NewReturn()
			ret.SetAnswerId(call.QuestionId())
			res, _ := ret.NewResults()
			list, _ := res.NewCapTable(1)
			list.At(0).SetSenderHosted(uint32(20 + i))
			ur, _ := captp.NewGrpcService_unary_Results(res.Segment())
			_ = capnp.Struct(ur).SetPtr(1, capnp.NewInterface(res.Segment(), 0).ToPtr())
			_ = res.SetContent(ur.ToPtr())
		})
		errs[i] = <-done
		rel, _ := s.expect(rpccp.Message_Which_release).Release()
		if rel.Id() != uint32(20+i) {
			t.Fatalf("release of %d, want %d", rel.Id(), 20+i)
		}
	}
	if errs[0] == nil || errs[0].Error() != errs[1].Error() || exc.TypeOf(errs[0]) != exc.Overloaded {
		t.Fatalf("direct error %v, normal %v", errs[0], errs[1])
	}
	poll(t, "questions freed", func() bool { return c.Stats().Questions == 0 })
}

// TestCallDirectFallback: a local capability, a bootstrap promise not yet
// resolved and a promise import take the normal path, with the same
// results.
func TestCallDirectFallback(t *testing.T) {
	ctx := ctxT(t)
	local := capnp.Client(captp.GrpcService_ServerToClient(&directService{}))
	defer local.Release()
	if got, direct, err := directReply(ctx, local, "m", "l"); err != nil || direct || got != "echo:l" {
		t.Fatalf("local: %q direct=%v %v", got, direct, err)
	}
	if _, direct, err := directReply(ctx, local, "fail", ""); err == nil || direct || exc.TypeOf(err) != exc.Overloaded {
		t.Fatalf("local fail: direct=%v %v", direct, err)
	}
	var null capnp.Client
	_, _, derr := directReply(ctx, null, "m", "")
	_, nerr := callNormal(ctx, null, "m", "")
	if derr == nil || derr.Error() != nerr.Error() {
		t.Fatalf("null client: direct error %v, normal %v", derr, nerr)
	}

	s, c := newScript(t, engine.Options{})
	boot := c.Bootstrap(ctx) // not resolved: calls pipeline on the question
	defer boot.Release()
	bq, _ := s.expect(rpccp.Message_Which_bootstrap).Bootstrap()
	type result struct {
		reply  string
		direct bool
		err    error
	}
	done := make(chan result, 1)
	go func() {
		r, d, err := directReply(ctx, boot, "m", "p")
		done <- result{r, d, err}
	}()
	call, _ := s.expect(rpccp.Message_Which_call).Call()
	if tgt, _ := call.Target(); tgt.Which() != rpccp.MessageTarget_Which_promisedAnswer {
		t.Fatalf("call on the unresolved bootstrap went to %v", tgt.Which())
	}
	// The bootstrap resolves to a promise import (senderPromise).
	s.send(func(m rpccp.Message) {
		ret, _ := m.NewReturn()
		ret.SetAnswerId(bq.QuestionId())
		res, _ := ret.NewResults()
		list, _ := res.NewCapTable(1)
		list.At(0).SetSenderPromise(9)
		_ = res.SetContent(capnp.NewInterface(res.Segment(), 0).ToPtr())
	})
	replyTo := func(qid uint32, text string) {
		s.send(func(m rpccp.Message) {
			ret, _ := m.NewReturn()
			ret.SetAnswerId(qid)
			res, _ := ret.NewResults()
			ur, _ := captp.NewGrpcService_unary_Results(res.Segment())
			rep, _ := ur.NewReply()
			_ = rep.SetMessage_([]byte(text))
			_ = res.SetContent(ur.ToPtr())
		})
	}
	replyTo(call.QuestionId(), "pipelined")
	if got := <-done; got.err != nil || got.direct || got.reply != "pipelined" {
		t.Fatalf("pipelined: %q direct=%v %v", got.reply, got.direct, got.err)
	}
	// (Resolve would wait for the promise import too.)
	poll(t, "the bootstrap to return", func() bool { return c.Stats().Questions == 0 })
	go func() {
		r, d, err := directReply(ctx, boot, "m", "p")
		done <- result{r, d, err}
	}()
	call, _ = s.expect(rpccp.Message_Which_call).Call()
	if tgt, _ := call.Target(); tgt.Which() != rpccp.MessageTarget_Which_importedCap || tgt.ImportedCap() != 9 {
		t.Fatalf("call on the promise import went to %v", tgt)
	}
	replyTo(call.QuestionId(), "promise")
	if got := <-done; got.err != nil || got.direct || got.reply != "promise" {
		t.Fatalf("promise import: %q direct=%v %v", got.reply, got.direct, got.err)
	}
	poll(t, "questions freed", func() bool { return c.Stats().Questions == 0 })
}

// TestCallDirectSizeHint: a large request with a size hint is built in a
// pooled buffer on the direct path and arrives whole.
func TestCallDirectSizeHint(t *testing.T) {
	s, c := newScript(t, engine.Options{})
	ctx := ctxT(t)
	boot := s.bootstrapPeer(ctx, c, 7)
	defer boot.Release()
	big := strings.Repeat("z", 64<<10)
	done := make(chan error, 1)
	go func() {
		out, err := engine.CallDirect(ctx, boot, unaryMethod, unaryParamsSize, unaryParams("m", big), len(big)+512)
		if err == nil {
			out.Release()
		}
		done <- err
	}()
	call, _ := s.expect(rpccp.Message_Which_call).Call()
	p, _ := call.Params()
	content, _ := p.Content()
	req, _ := captp.GrpcService_unary_Params(content.Struct()).Request()
	if string(req) != big {
		t.Fatalf("request of %d bytes, want %d", len(req), len(big))
	}
	s.send(func(m rpccp.Message) {
		ret, _ := m.NewReturn()
		ret.SetAnswerId(call.QuestionId())
		res, _ := ret.NewResults()
		ur, _ := captp.NewGrpcService_unary_Results(res.Segment())
		_ = res.SetContent(ur.ToPtr())
	})
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no result")
	}
}

// BenchmarkCallDirect compares a unary call (one at a time, engine to
// engine over loopback TCP) made through go-capnp's client machinery
// (normal) with engine.CallDirect (direct). allocs/op and cpu-us/op count
// both sides.
func BenchmarkCallDirect(b *testing.B) {
	a, bc := benchPair(b)
	impl := &directService{}
	srv := engine.NewConn(engine.NewStreamCodec(bc, 0), &engine.Options{Bootstrap: capnp.Client(captp.GrpcService_ServerToClient(impl))})
	defer srv.Close()
	cl := engine.NewConn(engine.NewStreamCodec(a, 0), nil)
	defer cl.Close()
	ctx, cancel := context.WithCancel(context.Background()) // cancellable, as a bridged call's is
	defer cancel()
	svc := cl.Bootstrap(ctx)
	defer svc.Release()
	if err := svc.Resolve(ctx); err != nil {
		b.Fatal(err)
	}
	b.Run("normal", func(b *testing.B) {
		b.ReportAllocs()
		cpu := processCPU()
		for b.Loop() {
			if got, err := callNormal(ctx, svc, "m", "x"); err != nil || got != "echo:x" {
				b.Fatal(got, err)
			}
		}
		b.ReportMetric(float64(processCPU()-cpu)/1e3/float64(b.N), "cpu-us/op")
	})
	b.Run("direct", func(b *testing.B) {
		b.ReportAllocs()
		cpu := processCPU()
		for b.Loop() {
			got, direct, err := directReply(ctx, svc, "m", "x")
			if err != nil || got != "echo:x" || !direct {
				b.Fatal(got, direct, err)
			}
		}
		b.ReportMetric(float64(processCPU()-cpu)/1e3/float64(b.N), "cpu-us/op")
	})
}

func benchPair(b *testing.B) (net.Conn, net.Conn) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		ch <- c
	}()
	a, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	return a, <-ch
}

func processCPU() int64 { return int64(cputime.Process()) }

// TestUnimplementedEchoWaitsForCancelFinish: a call is cancelled (its
// Finish is being sent) when the peer's Unimplemented echo of it comes:
// the id must not go to the next question before that Finish is out, or
// the Finish would cancel the new call. (Found by a review; the normal
// path had it too.)
func TestUnimplementedEchoWaitsForCancelFinish(t *testing.T) {
	cc := newChanCodec()
	gate := make(chan struct{})
	held := make(chan struct{}, 1)
	var armed atomic.Bool
	cc.beforeEncode = func(m rpccp.Message) {
		if m.Which() == rpccp.Message_Which_finish && armed.CompareAndSwap(true, false) {
			held <- struct{}{}
			<-gate
		}
	}
	s, c := newScriptOn(t, cc, engine.Options{})
	ctx := ctxT(t)
	boot := s.bootstrapPeer(ctx, c, 7)
	defer boot.Release()
	poll(t, "bootstrap question freed", func() bool { return c.Stats().Questions == 0 })

	armed.Store(true)
	cctx, cancel := context.WithCancel(ctx)
	first := make(chan error, 1)
	go func() {
		_, err := callDirect(cctx, boot, "m", "a")
		first <- err
	}()
	call1, _ := s.expect(rpccp.Message_Which_call).Call()
	qid1 := call1.QuestionId()
	cancel()
	<-held // the cancel's Finish is about to be encoded
	s.send(func(m rpccp.Message) {
		inner, _ := rpccp.NewMessage(m.Segment())
		ic, _ := inner.NewCall()
		ic.SetQuestionId(qid1)
		_ = m.SetUnimplemented(inner)
	})
	// A round trip through the receive loop: the echo is handled.
	s.send(func(m rpccp.Message) {
		b, _ := m.NewBootstrap()
		b.SetQuestionId(100)
	})
	s.expect(rpccp.Message_Which_return)
	s.finish(100)
	second := make(chan error, 1)
	go func() {
		out, err := callDirect(ctx, boot, "m", "b")
		if err == nil {
			out.Release()
		}
		second <- err
	}()
	call2, _ := s.expect(rpccp.Message_Which_call).Call()
	qid2 := call2.QuestionId()
	close(gate)
	fin, _ := s.expect(rpccp.Message_Which_finish).Finish()
	if fin.QuestionId() != qid1 || qid2 == qid1 {
		t.Errorf("the cancelled call %d's Finish names question %d; the second call is %d", qid1, fin.QuestionId(), qid2)
	}
	<-first
	s.send(func(m rpccp.Message) {
		ret, _ := m.NewReturn()
		ret.SetAnswerId(qid2)
		ret.SetCanceled()
	})
	<-second
	poll(t, "every question freed", func() bool { return c.Stats().Questions == 0 })
}

// callEither calls boot's m with "x" on a goroutine, by CallDirect or by
// the normal path, and reports the call's error.
func callEither(ctx context.Context, boot capnp.Client, direct bool) <-chan error {
	done := make(chan error, 1)
	go func() {
		if direct {
			_, _, err := directReply(ctx, boot, "m", "x")
			done <- err
			return
		}
		_, err := callNormal(ctx, boot, "m", "x")
		done <- err
	}()
	return done
}
