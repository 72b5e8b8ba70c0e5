package engine_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/vatcar/vatcar/proto/captp"
	"github.com/vatcar/vatcar/vat/engine"
)

// unaryCall is the peer's call qid of GrpcService.unary (method m) on
// export.
func unaryCall(qid, export uint32, method string) func(rpccp.Message) {
	return func(m rpccp.Message) {
		call, _ := m.NewCall()
		call.SetQuestionId(qid)
		call.SetInterfaceId(captp.GrpcService_TypeID)
		call.SetMethodId(0)
		tg, _ := call.NewTarget()
		tg.SetImportedCap(export)
		p, _ := call.NewParams()
		args, _ := captp.NewGrpcService_unary_Params(p.Segment())
		head, _ := args.NewCall()
		_ = head.SetMethod(method)
		_ = args.SetRequest([]byte("hi"))
		_ = p.SetContent(args.ToPtr())
	}
}

// expectReturn returns the next Return, which must answer qid with kind.
func (s script) expectReturn(qid uint32, kind rpccp.Return_Which) rpccp.Return {
	s.t.Helper()
	r, _ := s.expect(rpccp.Message_Which_return).Return()
	if r.AnswerId() != qid || r.Which() != kind {
		s.t.Fatalf("got return %d %v, want %d %v", r.AnswerId(), r.Which(), qid, kind)
	}
	return r
}

// TestScriptNoFinishNeeded: a Return whose results hold no capability says
// noFinishNeeded and its answer is gone at once; a Bootstrap's Return, a
// Return carrying a capability and an exception do not, and their answers
// wait for the Finish. A Finish for an answer already dropped (an older
// peer finishes anyway) is ignored: the connection lives and the id is
// used again, with or without that Finish.
func TestScriptNoFinishNeeded(t *testing.T) {
	svc := &service{cancelled: make(chan struct{}), hold: make(chan struct{})}
	s, c := newScript(t, engine.Options{Bootstrap: capnp.Client(captp.GrpcService_ServerToClient(svc))})
	s.restoreFromConn(0, "")
	br := s.expectReturn(0, rpccp.Return_Which_results)
	if br.NoFinishNeeded() {
		t.Error("Bootstrap Return says noFinishNeeded: the spec wants its Finish")
	}
	p, _ := br.Results()
	ct, _ := p.CapTable()
	export := ct.At(0).SenderHosted()

	// A unary call: results without capabilities.
	s.send(unaryCall(1, export, "x"))
	if r := s.expectReturn(1, rpccp.Return_Which_results); !r.NoFinishNeeded() {
		t.Fatal("unary Return without noFinishNeeded")
	}
	if st := c.Stats(); st.Answers != 1 {
		t.Fatalf("Stats().Answers = %d after the unary Return, want 1 (the Bootstrap)", st.Answers)
	}
	// An older peer finishes anyway, then reuses the id.
	s.finish(1)
	s.send(unaryCall(1, export, "y"))
	if r := s.expectReturn(1, rpccp.Return_Which_results); !r.NoFinishNeeded() {
		t.Fatal("second unary Return without noFinishNeeded")
	}
	// A peer that knows the flag reuses the id without a Finish.
	s.send(unaryCall(1, export, "z"))
	s.expectReturn(1, rpccp.Return_Which_results)

	// open returns a capability (up = the peer's own down): its Finish is
	// needed.
	s.send(func(m rpccp.Message) {
		call, _ := m.NewCall()
		call.SetQuestionId(2)
		call.SetInterfaceId(captp.GrpcService_TypeID)
		call.SetMethodId(1)
		tg, _ := call.NewTarget()
		tg.SetImportedCap(export)
		pl, _ := call.NewParams()
		args, _ := captp.NewGrpcService_open_Params(pl.Segment())
		_ = capnp.Struct(args).SetPtr(1, capnp.NewInterface(pl.Segment(), 0).ToPtr())
		_ = pl.SetContent(args.ToPtr())
		list, _ := pl.NewCapTable(1)
		list.At(0).SetSenderHosted(7)
	})
	or := s.expectReturn(2, rpccp.Return_Which_results)
	if or.NoFinishNeeded() {
		t.Error("Return carrying a capability says noFinishNeeded")
	}
	if op, _ := or.Results(); true {
		if oct, _ := op.CapTable(); oct.Len() != 1 {
			t.Fatalf("open's results carry %d capabilities, want 1", oct.Len())
		}
	}
	// An exception (an unknown method): its Finish is needed too.
	s.send(func(m rpccp.Message) {
		unaryCall(3, export, "x")(m)
		call, _ := m.Call()
		call.SetMethodId(9)
	})
	if r := s.expectReturn(3, rpccp.Return_Which_exception); r.NoFinishNeeded() {
		t.Error("exception Return says noFinishNeeded")
	}
	if st := c.Stats(); st.Answers != 3 {
		t.Fatalf("Stats().Answers = %d, want 3 (Bootstrap, open, the exception)", st.Answers)
	}
	for _, q := range []uint32{0, 2, 3} {
		s.finish(q)
	}
	poll(t, "answers gone after their Finishes", func() bool { return c.Stats().Answers == 0 })
	// A Finish for an id never used is ignored too (not told apart).
	s.finish(40)
	s.send(unaryCall(4, export, "after"))
	s.expectReturn(4, rpccp.Return_Which_results)
	if c.Err() != nil {
		t.Fatalf("connection ended: %v", c.Err())
	}
	// A second Finish for an answer still held is still a violation
	// ("hold" keeps its answer whatever the Finish does: "block" would
	// return when cancelled, and then the second Finish, for an answer
	// gone, would be ignored).
	s.send(unaryCall(5, export, "hold"))
	s.finish(5)
	s.finish(5)
	ab, _ := s.expect(rpccp.Message_Which_abort).Abort()
	if reason, _ := ab.Reason(); !strings.Contains(reason, "already finished") {
		t.Fatalf("abort reason %q", reason)
	}
	waitDone(t, c)
	close(svc.hold)
}

// TestScriptPipelinedOnDroppedAnswer: the peer pipelines on a call's
// results before their Return (noFinishNeeded) reaches it, so the calls
// arrive after this side dropped the answer: a call on promisedAnswer gets
// an exception Return, a receiverAnswer capability in a call's params is a
// broken capability; the connection lives and the id can be used again.
func TestScriptPipelinedOnDroppedAnswer(t *testing.T) {
	k := &keeper{down: make(chan captp.Sink, 1)}
	s, c := newScript(t, engine.Options{Bootstrap: capnp.Client(captp.GrpcService_ServerToClient(k))})
	ctx := ctxT(t)
	export := s.bootstrapConn(0)
	s.send(unaryCall(1, export, "x"))
	if r := s.expectReturn(1, rpccp.Return_Which_results); !r.NoFinishNeeded() {
		t.Fatal("unary Return without noFinishNeeded")
	}
	// Sent by the peer before it had that Return: Sink.headers on
	// promisedAnswer(1).reply ...
	s.send(sinkHeadersCall(2, func(tg rpccp.MessageTarget) {
		pa, _ := tg.NewPromisedAnswer()
		pa.SetQuestionId(1)
		tr, _ := pa.NewTransform(1)
		tr.At(0).SetGetPointerField(0)
	}, "k"))
	r := s.expectReturn(2, rpccp.Return_Which_exception)
	e, _ := r.Exception()
	if reason, _ := e.Reason(); !strings.Contains(reason, "does not hold") {
		t.Fatalf("exception %q", reason)
	}
	// ... and open(down = receiverAnswer(1)).
	s.send(openWithAnswerSink(3, export, 1))
	down := <-k.down
	defer down.Release()
	s.expectReturn(3, rpccp.Return_Which_results)
	fut, rel := down.Headers(ctx, headers("late"))
	defer rel()
	if _, err := fut.Struct(); err == nil || !strings.Contains(err.Error(), "does not hold") {
		t.Fatalf("call on a receiverAnswer of a dropped answer: %v", err)
	}
	// The peer reuses id 1.
	s.send(unaryCall(1, export, "again"))
	s.expectReturn(1, rpccp.Return_Which_results)
	if c.Err() != nil {
		t.Fatalf("connection ended: %v", c.Err())
	}
}

// TestScriptNoFinishNeededCaller: a Return that says noFinishNeeded frees
// the question at once: no Finish is sent and the next call takes the same
// id. A Bootstrap's Return is finished even if it says so (the spec asks
// for that Finish).
func TestScriptNoFinishNeededCaller(t *testing.T) {
	s, c := newScript(t, engine.Options{})
	ctx := ctxT(t)
	boot := captp.GrpcService(c.Bootstrap(ctx))
	defer boot.Release()
	bq, _ := s.expect(rpccp.Message_Which_bootstrap).Bootstrap()
	s.send(func(m rpccp.Message) {
		ret, _ := m.NewReturn()
		ret.SetAnswerId(bq.QuestionId())
		ret.SetNoFinishNeeded(true)
		res, _ := ret.NewResults()
		list, _ := res.NewCapTable(1)
		list.At(0).SetSenderHosted(7)
		_ = res.SetContent(capnp.NewInterface(res.Segment(), 0).ToPtr())
	})
	if fin, _ := s.expect(rpccp.Message_Which_finish).Finish(); fin.QuestionId() != bq.QuestionId() {
		t.Fatalf("finish of %d, want the Bootstrap's %d", fin.QuestionId(), bq.QuestionId())
	}
	var ids []uint32
	for i := 0; i < 3; i++ {
		fut, rel := boot.Unary(ctx, nil)
		msg := <-s.cc.out
		m, _ := rpccp.ReadRootMessage(msg)
		if m.Which() != rpccp.Message_Which_call {
			t.Fatalf("call %d: got %v, want a Call (no Finish)", i, m.Which())
		}
		call, _ := m.Call()
		ids = append(ids, call.QuestionId())
		s.send(func(m rpccp.Message) {
			ret, _ := m.NewReturn()
			ret.SetAnswerId(call.QuestionId())
			ret.SetNoFinishNeeded(true)
			res, _ := ret.NewResults()
			st, _ := captp.NewGrpcService_unary_Results(res.Segment())
			_ = res.SetContent(st.ToPtr())
		})
		if _, err := fut.Struct(); err != nil {
			t.Fatal(err)
		}
		rel()
		poll(t, "question freed", func() bool { return c.Stats().Questions == 0 })
	}
	if ids[0] != ids[1] || ids[1] != ids[2] {
		t.Fatalf("question ids %v: the freed id was not used again", ids)
	}
	// A cancel crossing the Return: the Finish goes (the peer ignores
	// it), and the id is free once both are done.
	cctx, cancel := context.WithCancel(ctx)
	fut, rel := boot.Unary(cctx, nil)
	defer rel()
	call, _ := s.expect(rpccp.Message_Which_call).Call()
	cancel()
	if fin, _ := s.expect(rpccp.Message_Which_finish).Finish(); fin.QuestionId() != call.QuestionId() {
		t.Fatalf("finish of %d, want %d", fin.QuestionId(), call.QuestionId())
	}
	s.send(func(m rpccp.Message) {
		ret, _ := m.NewReturn()
		ret.SetAnswerId(call.QuestionId())
		ret.SetNoFinishNeeded(true)
		res, _ := ret.NewResults()
		st, _ := captp.NewGrpcService_unary_Results(res.Segment())
		_ = res.SetContent(st.ToPtr())
	})
	if _, err := fut.Struct(); err == nil {
		t.Fatal("cancelled call succeeded")
	}
	poll(t, "cancelled question freed", func() bool { return c.Stats().Questions == 0 })
	fut2, rel2 := boot.Unary(ctx, nil)
	defer rel2()
	_ = fut2
	if c2, _ := s.expect(rpccp.Message_Which_call).Call(); c2.QuestionId() != call.QuestionId() {
		t.Fatalf("next call took id %d, want the freed %d", c2.QuestionId(), call.QuestionId())
	}
	select {
	case msg := <-s.cc.out:
		m, _ := rpccp.ReadRootMessage(msg)
		t.Fatalf("unexpected %v after the calls", m.Which())
	default:
	}
}

// finishCounter wraps a codec and counts the Finish messages and the
// highest question id of the Calls it sends, and the Finish messages it
// receives.
type finishCounter struct {
	engine.Codec
	mu       sync.Mutex
	finishes int
	calls    int
	maxQID   uint32
	// inFinishes counts the Finish messages received.
	inFinishes int
}

func (f *finishCounter) Encode(m *capnp.Message) error {
	if rm, err := rpccp.ReadRootMessage(m); err == nil {
		f.mu.Lock()
		switch rm.Which() {
		case rpccp.Message_Which_finish:
			f.finishes++
		case rpccp.Message_Which_call:
			call, _ := rm.Call()
			f.calls++
			f.maxQID = max(f.maxQID, call.QuestionId())
		}
		f.mu.Unlock()
	}
	return f.Codec.Encode(m)
}

func (f *finishCounter) Decode() (*capnp.Message, error) {
	m, err := f.Codec.Decode()
	if err == nil {
		if rm, rerr := rpccp.ReadRootMessage(m); rerr == nil && rm.Which() == rpccp.Message_Which_finish {
			f.mu.Lock()
			f.inFinishes++
			f.mu.Unlock()
		}
	}
	return m, err
}

func (f *finishCounter) received() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.inFinishes
}

func (f *finishCounter) counts() (finishes, calls int, maxQID uint32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.finishes, f.calls, f.maxQID
}

// TestNoFinishNeededEngines: between two engines over TCP, unary calls
// send no Finish (only the Bootstrap's goes), the caller's question ids are
// used again, and both sides' tables empty with no Finish to wait for.
func TestNoFinishNeededEngines(t *testing.T) {
	a, b := tcpPair(t)
	srv := engine.NewConn(engine.NewStreamCodec(b, 0), &engine.Options{Bootstrap: capnp.Client(captp.GrpcService_ServerToClient(&service{}))})
	defer srv.Close()
	fc := &finishCounter{Codec: engine.NewStreamCodec(a, 0)}
	cli := engine.NewConn(fc, &engine.Options{})
	defer cli.Close()
	ctx := ctxT(t)
	boot := captp.GrpcService(cli.Bootstrap(ctx))
	defer boot.Release()
	const n = 200
	for i := 0; i < n; i++ {
		fut, rel := boot.Unary(ctx, func(p captp.GrpcService_unary_Params) error {
			return p.SetRequest([]byte("x"))
		})
		res, err := fut.Struct()
		if err != nil {
			t.Fatal(err)
		}
		reply, _ := res.Reply()
		if msg, _ := reply.Message_(); string(msg) != "echo:x" {
			t.Fatalf("reply %q", msg)
		}
		rel()
	}
	poll(t, "both tables empty", func() bool {
		return cli.Stats().Questions == 0 && srv.Stats().Answers == 0
	})
	fin, calls, maxQID := fc.counts()
	if calls != n {
		t.Fatalf("%d calls sent, want %d", calls, n)
	}
	if fin != 1 {
		t.Fatalf("%d Finish messages for %d calls and a Bootstrap, want 1 (the Bootstrap's)", fin, n)
	}
	if maxQID > 1 {
		t.Fatalf("highest question id %d for calls one at a time: ids not used again", maxQID)
	}
}

// TestNoFinishNeededGoCapnpPeer: go-capnp v3.1.0-alpha.2 ignores
// noFinishNeeded and finishes every call (some 250 ms after its Return),
// reusing the id only then. The engine ignores those Finishes: once they
// have all arrived, the connection still serves calls.
func TestNoFinishNeededGoCapnpPeer(t *testing.T) {
	a, b := tcpPair(t)
	fc := &finishCounter{Codec: engine.NewStreamCodec(b, 0)}
	srv := engine.NewConn(fc, &engine.Options{Bootstrap: capnp.Client(captp.GrpcService_ServerToClient(&service{}))})
	defer srv.Close()
	cli := goPeer(a, capnp.Client{})
	defer cli.close()
	ctx := ctxT(t)
	boot := captp.GrpcService(cli.bootstrap(ctx))
	defer boot.Release()
	call := func() {
		t.Helper()
		fut, rel := boot.Unary(ctx, func(p captp.GrpcService_unary_Params) error {
			return p.SetRequest([]byte("x"))
		})
		defer rel()
		if _, err := fut.Struct(); err != nil {
			t.Fatal(err)
		}
	}
	const n = 5
	for i := 0; i < n; i++ {
		call()
	}
	poll(t, "go-capnp's Finishes", func() bool { return fc.received() >= n || srv.Err() != nil })
	call()
	if err := srv.Err(); err != nil {
		t.Fatalf("connection ended: %v", err)
	}
	if st := srv.Stats(); st.Answers > 1 {
		t.Fatalf("Stats().Answers = %d, want at most the Bootstrap's", st.Answers)
	}
}
