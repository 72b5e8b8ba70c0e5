package engine_test

import (
	"context"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/vatcar/vatcar/proto/captp"
	"github.com/vatcar/vatcar/vat/engine"
)

// limits records what OnLimit was told.
type limits struct {
	mu  sync.Mutex
	got []string
}

func (l *limits) on(reason string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.got = append(l.got, reason)
}

func (l *limits) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.got, ",")
}

// bootstrapExport has the peer bootstrap the Conn with question qid and
// returns the export id of the capability it got.
func (s script) bootstrapExport(qid uint32) uint32 {
	s.t.Helper()
	s.send(func(m rpccp.Message) {
		b, _ := m.NewBootstrap()
		b.SetQuestionId(qid)
	})
	r, _ := s.expect(rpccp.Message_Which_return).Return()
	if r.AnswerId() != qid || r.Which() != rpccp.Return_Which_results {
		s.t.Fatalf("bootstrap %d: return %d %v", qid, r.AnswerId(), r.Which())
	}
	p, _ := r.Results()
	ct, _ := p.CapTable()
	return ct.At(0).SenderHosted()
}

func (s script) finish(qid uint32) {
	s.send(func(m rpccp.Message) {
		f, _ := m.NewFinish()
		f.SetQuestionId(qid)
		f.SetReleaseResultCaps(false)
	})
}

// expectException returns the next Return, which must be an exception of
// type want answering qid, and its reason.
func (s script) expectException(qid uint32, want rpccp.Exception_Type) (rpccp.Return, string) {
	s.t.Helper()
	r, _ := s.expect(rpccp.Message_Which_return).Return()
	if r.AnswerId() != qid || r.Which() != rpccp.Return_Which_exception {
		s.t.Fatalf("got return %d %v, want an exception for %d", r.AnswerId(), r.Which(), qid)
	}
	e, _ := r.Exception()
	reason, _ := e.Reason()
	if e.Type() != want {
		s.t.Fatalf("exception %v %q, want type %v", e.Type(), reason, want)
	}
	return r, reason
}

// callErr returns the error of a Sink.headers call on cl.
func callErr(ctx context.Context, cl capnp.Client) error {
	fut, release := captp.Sink(cl).Headers(ctx, nil)
	defer release()
	_, err := fut.Struct()
	return err
}

func waitDone(t *testing.T, c *engine.Conn) {
	t.Helper()
	select {
	case <-c.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("conn did not end")
	}
}

// TestScriptCallTooLarge: a Call the codec skipped for its size gets an
// Overloaded exception naming the size and the limit, whose Return says
// the params' capabilities are released; the connection goes on.
func TestScriptCallTooLarge(t *testing.T) {
	rec := &recorder{}
	lim := &limits{}
	s, c := newScript(t, engine.Options{Bootstrap: capnp.Client(captp.Sink_ServerToClient(rec)), OnLimit: lim.on})
	export := s.bootstrapExport(0)
	s.cc.in <- &engine.MessageTooLarge{Known: true, Which: rpccp.Message_Which_call, ID: 1, Size: 5 << 20, Limit: 2 << 20}
	r, reason := s.expectException(1, rpccp.Exception_Type_overloaded)
	for _, want := range []string{"5242880 bytes", "2097152 bytes"} {
		if !strings.Contains(reason, want) {
			t.Errorf("reason %q does not name %q", reason, want)
		}
	}
	if !r.ReleaseParamCaps() {
		t.Error("releaseParamCaps false: the peer would wait for Releases of capabilities never read")
	}
	// The connection lives: the next call passes.
	s.send(sinkHeadersCall(2, func(t rpccp.MessageTarget) { t.SetImportedCap(export) }, "after"))
	r2, _ := s.expect(rpccp.Message_Which_return).Return()
	if r2.AnswerId() != 2 || r2.Which() != rpccp.Return_Which_results {
		t.Fatalf("call after the large one: %d %v", r2.AnswerId(), r2.Which())
	}
	if got := lim.String(); got != engine.LimitMessageSize {
		t.Errorf("OnLimit got %q, want %q", got, engine.LimitMessageSize)
	}
	// The refused call holds its answer until its Finish, like the
	// bootstrap: its id is not free before. The call after it returned
	// results without capabilities: no Finish needed, its answer is gone
	// (the Finish the loop below sends anyway is ignored).
	if !r2.NoFinishNeeded() {
		t.Error("the call after the large one: Return without noFinishNeeded")
	}
	if st := c.Stats(); st.Answers != 2 {
		t.Errorf("Stats().Answers = %d, want 2 (the bootstrap, the refused call)", st.Answers)
	}
	for q := uint32(0); q <= 2; q++ {
		s.finish(q)
	}
	s.send(func(m rpccp.Message) {
		r, _ := m.NewRelease()
		r.SetId(export)
		r.SetReferenceCount(1)
	})
	poll(t, "tables empty", zeroStats(c))
	if c.Err() != nil {
		t.Fatalf("connection ended: %v", c.Err())
	}
}

// TestScriptReturnTooLarge: a Return the codec skipped for its size fails
// its question with an Overloaded exception; the Finish releases the
// results' capabilities; the connection goes on.
func TestScriptReturnTooLarge(t *testing.T) {
	lim := &limits{}
	s, c := newScript(t, engine.Options{OnLimit: lim.on})
	ctx := ctxT(t)
	boot := c.Bootstrap(ctx)
	defer boot.Release()
	bq, _ := s.expect(rpccp.Message_Which_bootstrap).Bootstrap()
	s.cc.in <- &engine.MessageTooLarge{Known: true, Which: rpccp.Message_Which_return, ID: bq.QuestionId(), ReleaseParamCaps: true, Size: 70 << 20, Limit: 5 << 20}
	fin, _ := s.expect(rpccp.Message_Which_finish).Finish()
	if fin.QuestionId() != bq.QuestionId() || !fin.ReleaseResultCaps() {
		t.Fatalf("finish %d releaseResultCaps %v", fin.QuestionId(), fin.ReleaseResultCaps())
	}
	poll(t, "the bootstrap to settle", func() bool { return c.Stats().Questions == 0 })
	if err := callErr(ctx, boot); exc.TypeOf(err) != exc.Overloaded || !strings.Contains(err.Error(), "73400320 bytes") {
		t.Fatalf("bootstrap over the limit: %v, want Overloaded naming the size", err)
	}
	// The connection lives: a second bootstrap is asked and answered.
	boot2 := c.Bootstrap(ctx)
	defer boot2.Release()
	bq2, _ := s.expect(rpccp.Message_Which_bootstrap).Bootstrap()
	s.send(func(m rpccp.Message) {
		ret, _ := m.NewReturn()
		ret.SetAnswerId(bq2.QuestionId())
		_, _ = ret.NewException()
	})
	poll(t, "the second bootstrap to settle", func() bool { return c.Stats().Questions == 0 })
	if err := callErr(ctx, boot2); err == nil || exc.TypeOf(err) == exc.Overloaded {
		t.Fatalf("second bootstrap: %v, want the peer's exception", err)
	}
	if got := lim.String(); got != engine.LimitMessageSize {
		t.Errorf("OnLimit got %q", got)
	}
	if c.Err() != nil {
		t.Fatalf("connection ended: %v", c.Err())
	}
}

// TestScriptTooLargeUnattributed: an oversize message whose id could not
// be read, or of another kind, is a protocol violation: that connection
// aborts with a reason naming the size.
func TestScriptTooLargeUnattributed(t *testing.T) {
	for _, tc := range []struct {
		name string
		e    engine.MessageTooLarge
		want string
	}{
		{"unknown", engine.MessageTooLarge{Size: 9 << 20, Limit: 1 << 20}, "9437184 bytes"},
		{"resolve", engine.MessageTooLarge{Known: true, Which: rpccp.Message_Which_resolve, Size: 9 << 20, Limit: 1 << 20}, "resolve message of 9437184 bytes"},
		{"return for no question", engine.MessageTooLarge{Known: true, Which: rpccp.Message_Which_return, ID: 7, Size: 9 << 20, Limit: 1 << 20}, "unknown question"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lim := &limits{}
			s, c := newScript(t, engine.Options{OnLimit: lim.on})
			e := tc.e
			s.cc.in <- &e
			ab, _ := s.expect(rpccp.Message_Which_abort).Abort()
			if reason, _ := ab.Reason(); !strings.Contains(reason, tc.want) {
				t.Fatalf("abort reason %q, want it to contain %q", reason, tc.want)
			}
			waitDone(t, c)
			poll(t, "OnLimit to hear of the violation", func() bool { return lim.String() == engine.ClosedProtocolViolation })
		})
	}
}

// TestScriptAnswerBudget: past MaxAnswers unfinished calls the peer's
// calls get an Overloaded exception (their capabilities go back, one
// Release each) and the connection lives; once the peer finishes, calls
// pass again; a peer that holds twice the budget has its connection
// closed with a reason.
func TestScriptAnswerBudget(t *testing.T) {
	rec := &recorder{}
	lim := &limits{}
	s, c := newScript(t, engine.Options{Bootstrap: capnp.Client(captp.Sink_ServerToClient(rec)), MaxAnswers: 2, OnLimit: lim.on})
	export := s.bootstrapExport(0)
	s.bootstrapExport(1)
	// Third unfinished call: refused, its capability given back.
	s.send(func(m rpccp.Message) {
		sinkHeadersCall(2, func(t rpccp.MessageTarget) { t.SetImportedCap(export) }, "x")(m)
		call, _ := m.Call()
		p, _ := call.Params()
		ct, _ := p.NewCapTable(1)
		ct.At(0).SetSenderHosted(42)
	})
	rel, _ := s.expect(rpccp.Message_Which_release).Release()
	if rel.Id() != 42 || rel.ReferenceCount() != 1 {
		t.Fatalf("release %d x%d, want 42 x1", rel.Id(), rel.ReferenceCount())
	}
	_, reason := s.expectException(2, rpccp.Exception_Type_overloaded)
	if !strings.Contains(reason, "too many unfinished calls") {
		t.Fatalf("reason %q", reason)
	}
	if keys, _ := rec.snapshot(); len(keys) != 0 {
		t.Fatalf("refused call delivered: %v", keys)
	}
	// Finishing makes room again.
	s.finish(1)
	s.finish(2)
	s.send(sinkHeadersCall(3, func(t rpccp.MessageTarget) { t.SetImportedCap(export) }, "y"))
	r, _ := s.expect(rpccp.Message_Which_return).Return()
	if r.AnswerId() != 3 || r.Which() != rpccp.Return_Which_results || !r.NoFinishNeeded() {
		t.Fatalf("call after finishing: %d %v noFinishNeeded %v", r.AnswerId(), r.Which(), r.NoFinishNeeded())
	}
	// A peer that finishes nothing: answers 0 and 4 held (3 needs no
	// Finish and is not held), 5 and 6 refused (and held until their
	// Finish), 7 closes the connection.
	boot := func(qid uint32) {
		s.send(func(m rpccp.Message) {
			b, _ := m.NewBootstrap()
			b.SetQuestionId(qid)
		})
	}
	s.bootstrapExport(4)
	boot(5)
	s.expectException(5, rpccp.Exception_Type_overloaded)
	boot(6)
	s.expectException(6, rpccp.Exception_Type_overloaded)
	boot(7)
	ab, _ := s.expect(rpccp.Message_Which_abort).Abort()
	if reason, _ := ab.Reason(); !strings.Contains(reason, "answer budget") || !strings.Contains(reason, "4 answers") {
		t.Fatalf("abort reason %q", reason)
	}
	waitDone(t, c)
	want := strings.Join([]string{engine.LimitAnswers, engine.LimitAnswers, engine.LimitAnswers, engine.LimitAnswersHeld}, ",")
	poll(t, "OnLimit to hear of the close", func() bool { return lim.String() == want })
}

// TestScriptRestoreLimit: with MaxRestores restores running, the next
// object-id Bootstrap is refused at once with an Overloaded exception and
// OnLimit hears of it; once the running ones have returned, restores are
// admitted again.
func TestScriptRestoreLimit(t *testing.T) {
	rec := &recorder{}
	lim := &limits{}
	gate := make(chan struct{})
	var started sync.WaitGroup
	started.Add(2)
	s, _ := newScript(t, engine.Options{MaxRestores: 2, OnLimit: lim.on, Restore: func(ctx context.Context, id []byte) (capnp.Client, error) {
		if string(id) == "held" {
			started.Done()
			if err := waitGate(ctx, gate); err != nil {
				return capnp.Client{}, err
			}
		}
		return capnp.Client(captp.Sink_ServerToClient(rec)), nil
	}})
	s.restoreFromConn(0, "held")
	s.restoreFromConn(1, "held")
	started.Wait()
	s.restoreFromConn(2, "svc")
	_, reason := s.expectException(2, rpccp.Exception_Type_overloaded)
	if !strings.Contains(reason, "too many restores") || lim.String() != engine.LimitRestores {
		t.Fatalf("reason %q, OnLimit told %q", reason, lim.String())
	}
	s.finish(2)
	close(gate)
	for range 2 {
		if r, _ := s.expect(rpccp.Message_Which_return).Return(); r.Which() != rpccp.Return_Which_results {
			t.Fatalf("held restore %d: %v", r.AnswerId(), r.Which())
		}
	}
	// The running count drops just after each Return is queued: poll
	// with fresh restores until one is admitted.
	qid := uint32(3)
	poll(t, "a restore to be admitted after the held ones returned", func() bool {
		s.restoreFromConn(qid, "svc")
		r, _ := s.expect(rpccp.Message_Which_return).Return()
		s.finish(qid)
		qid++
		return r.Which() == rpccp.Return_Which_results
	})
}

// TestReadMessageTooLarge reads the kind and id from the first bytes of a
// message's first segment, and leaves unknown what they do not hold.
func TestReadMessageTooLarge(t *testing.T) {
	seg0 := func(build func(rpccp.Message)) []byte {
		msg, seg, _ := capnp.NewMessage(capnp.SingleSegment(nil))
		m, _ := rpccp.NewRootMessage(seg)
		build(m)
		b, err := msg.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return b[8:] // past the one-segment stream header
	}
	call := seg0(func(m rpccp.Message) {
		c, _ := m.NewCall()
		c.SetQuestionId(41)
		p, _ := c.NewParams()
		d, _ := capnp.NewData(p.Segment(), make([]byte, 4096))
		_ = p.SetContent(d.ToPtr())
	})
	ret := seg0(func(m rpccp.Message) {
		r, _ := m.NewReturn()
		r.SetAnswerId(7)
		r.SetReleaseParamCaps(true)
	})
	for _, tc := range []struct {
		name   string
		prefix []byte
		want   engine.MessageTooLarge
	}{
		{"call", call[:1024], engine.MessageTooLarge{Known: true, Which: rpccp.Message_Which_call, ID: 41}},
		{"return", ret, engine.MessageTooLarge{Known: true, Which: rpccp.Message_Which_return, ID: 7, ReleaseParamCaps: true}},
		{"root only", call[:8], engine.MessageTooLarge{}},
		{"zeros", make([]byte, 1024), engine.MessageTooLarge{}},
		{"nothing", nil, engine.MessageTooLarge{}},
		{"odd length", call[:13], engine.MessageTooLarge{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got engine.MessageTooLarge
			engine.ReadMessageTooLarge(&got, tc.prefix)
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// gatedSink is a Sink whose headers calls wait for gate.
type gatedSink struct{ gate chan struct{} }

func (g *gatedSink) Headers(ctx context.Context, call captp.Sink_headers) error {
	<-g.gate
	return nil
}
func (g *gatedSink) Send(ctx context.Context, call captp.Sink_send) error   { return nil }
func (g *gatedSink) Close(ctx context.Context, call captp.Sink_close) error { return nil }

// heapInUse is the live heap after two collections.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestScriptReceiverAnswersDoNotPinMemory: a peer naming an answer that
// is still running (receiverAnswer) in Resolves of promises this side
// does not hold, or in the cap tables of calls, as often as it likes,
// makes this side hold nothing more for it once each message is handled
// (each pipe left the answer when its client was released; before, each
// stayed listed until the answer returned, about 150 bytes apiece); a
// Resolve's sender-hosted capability is released at once.
func TestScriptReceiverAnswersDoNotPinMemory(t *testing.T) {
	g := &gatedSink{gate: make(chan struct{})}
	s, _ := newScript(t, engine.Options{Bootstrap: capnp.Client(captp.Sink_ServerToClient(g))})
	export := s.bootstrapExport(0)
	s.finish(0)
	s.send(sinkHeadersCall(1, func(t rpccp.MessageTarget) { t.SetImportedCap(export) }, "held")) // runs until gate
	resolve := func(m rpccp.Message) {
		r, _ := m.NewResolve()
		r.SetPromiseId(777) // never exported by the peer
		d, _ := r.NewCap()
		pa, _ := d.NewReceiverAnswer()
		pa.SetQuestionId(1)
	}
	// A call whose params carry the running answer; it is refused for an
	// unknown method, and its params (and the pipe) are released.
	inParams := func(qid uint32) func(rpccp.Message) {
		return func(m rpccp.Message) {
			call, _ := m.NewCall()
			call.SetQuestionId(qid)
			call.SetInterfaceId(captp.Sink_TypeID)
			call.SetMethodId(99)
			tgt, _ := call.NewTarget()
			tgt.SetImportedCap(export)
			p, _ := call.NewParams()
			ct, _ := p.NewCapTable(1)
			pa, _ := ct.At(0).NewReceiverAnswer()
			pa.SetQuestionId(1)
		}
	}
	const resolves, calls = 2000, 200
	flood := func() {
		for range resolves {
			s.send(resolve)
		}
		for i := range calls {
			qid := uint32(2 + i%2)
			s.send(inParams(qid))
			s.expectException(qid, rpccp.Exception_Type_unimplemented)
			s.finish(qid)
		}
	}
	flood()
	before := heapInUse()
	flood()
	after := heapInUse()
	per := (float64(after) - float64(before)) / (resolves + calls)
	t.Logf("live heap %d -> %d bytes over %d more messages naming the running answer (%.1f bytes each)", before, after, resolves+calls, per)
	if per > 16 {
		t.Errorf("%.1f bytes held per message naming a running answer, want none", per)
	}
	// A Resolve of an unknown promise to a sender-hosted capability gives
	// that reference back.
	s.send(func(m rpccp.Message) {
		r, _ := m.NewResolve()
		r.SetPromiseId(778)
		d, _ := r.NewCap()
		d.SetSenderHosted(55)
	})
	rel, _ := s.expect(rpccp.Message_Which_release).Release()
	if rel.Id() != 55 || rel.ReferenceCount() != 1 {
		t.Errorf("release %d x%d, want 55 x1", rel.Id(), rel.ReferenceCount())
	}
	close(g.gate)
	if r, _ := s.expect(rpccp.Message_Which_return).Return(); r.AnswerId() != 1 || r.Which() != rpccp.Return_Which_results {
		t.Fatalf("held call: return %d %v", r.AnswerId(), r.Which())
	}
}

// TestScriptHeldDisembargoesBounded: Disembargos on an answer still
// delivering its pipelined calls wait for them (nothing answers a
// Disembargo, so none can be refused); a peer that leaves the delivery
// stuck (it reads nothing) and sends them without end has its connection
// closed at the answer budget, and OnLimit hears of it.
func TestScriptHeldDisembargoesBounded(t *testing.T) {
	goroutines := runtime.NumGoroutine()
	g := &gatedSink{gate: make(chan struct{})}
	lim := &limits{}
	const budget = 300
	s, c := newScript(t, engine.Options{Bootstrap: capnp.Client(captp.Sink_ServerToClient(g)), MaxAnswers: budget, OnLimit: lim.on})
	export := s.bootstrapExport(0)
	s.finish(0)
	s.send(sinkHeadersCall(1, func(t rpccp.MessageTarget) { t.SetImportedCap(export) }, "held"))
	// More calls pipelined on answer 1 than the codec takes unread: each
	// is refused (unknown method) by the delivery, which then waits.
	const pipelined = 2 * 64
	for q := uint32(2); q < 2+pipelined; q++ {
		s.send(func(m rpccp.Message) {
			call, _ := m.NewCall()
			call.SetQuestionId(q)
			call.SetInterfaceId(captp.Sink_TypeID)
			call.SetMethodId(99)
			tgt, _ := call.NewTarget()
			pa, _ := tgt.NewPromisedAnswer()
			pa.SetQuestionId(1)
		})
	}
	// A round trip: every pipelined call is queued on the answer.
	s.bootstrapExport(2 + pipelined)
	s.finish(2 + pipelined)
	close(g.gate)
	poll(t, "the delivery to fill the codec", func() bool { return len(s.cc.out) == cap(s.cc.out) })
	disembargo := func(k uint32) {
		s.send(func(m rpccp.Message) {
			d, _ := m.NewDisembargo()
			tg, _ := d.NewTarget()
			pa, _ := tg.NewPromisedAnswer()
			pa.SetQuestionId(1)
			d.Context().SetSenderLoopback(k)
		})
	}
	for k := range uint32(budget) + 1 {
		disembargo(k)
	}
	// The connection ends though the peer reads nothing (the Abort waits
	// at most a second for room).
	waitDone(t, c)
	poll(t, "OnLimit to hear of the close", func() bool { return strings.Contains(lim.String(), engine.LimitAnswersHeld) })
	// The delivery that was stuck ends too (the package's leak check
	// would see it otherwise).
	c.Close()
	poll(t, "the delivery's goroutine to end", func() bool { return runtime.NumGoroutine() <= goroutines })
}
