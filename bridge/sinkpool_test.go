package bridge

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"

	"github.com/vatcar/vatcar/internal/cputime"
)

// TestPingPongDrainsPooled runs a ping-pong stream (one message in flight,
// so every Sink.send finds its Sink's queue idle and starts a drain) and
// checks that the drains of both Sinks, the ingress's response Sink and
// the egress's request Sink, run on their owners' parked workers rather
// than a goroutine each; that the ingress's workers end when it is closed;
// and that no Sink outlives the stream.
func TestPingPongDrainsPooled(t *testing.T) {
	noWorkersLeft(t)
	expectWorkersEnd(t)
	b := newBackend(t)
	h := newHop(t, b.addr, hopConfig{})
	h.eg.pool.idlePeriod = time.Hour // before any call: only Close and the release end workers
	h.in.pool.idlePeriod = time.Hour
	cc := dial(t, h.addr)
	sinks := liveSinks.Load()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const rounds = 300
	s := rawStream(ctx, t, cc, "/t.T/Echo")
	for i := range rounds {
		m := fmt.Appendf(nil, "ping %d", i)
		if err := s.SendMsg(m); err != nil {
			t.Fatalf("SendMsg %d: %v", i, err)
		}
		var got []byte
		if err := s.RecvMsg(&got); err != nil || !bytes.Equal(got, m) {
			t.Fatalf("round %d: got %q, %v; want %q", i, got, err, m)
		}
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if err := s.RecvMsg(new([]byte)); err != io.EOF {
		t.Fatalf("stream end: %v, want io.EOF", err)
	}
	poll(t, func() bool { return liveSinks.Load() <= sinks }, "the stream's Sinks to shut down (now %d, was %d)", liveSinks.Load(), sinks)
	// Each side ran at least one drain per round. A worker that has not
	// parked yet when the next round's send arrives (it is preempted
	// between its last call's return and parking) leaves that drain to a
	// new one: rare, but not bounded by the machine's speed; a goroutine
	// per drain would start one per round.
	in, eg := h.in.pool.counts(), h.eg.pool.counts()
	t.Logf("after %d rounds: ingress pool %+v, egress pool %+v", rounds, in, eg)
	if in.started == 0 || in.started > rounds/10 {
		t.Errorf("ingress pool after %d rounds: %+v; want 1 to %d workers started", rounds, in, rounds/10)
	}
	if eg.started == 0 || eg.started > rounds/10 {
		t.Errorf("egress pool after %d rounds: %+v; want 1 to %d workers started", rounds, eg, rounds/10)
	}
	poll(t, func() bool { c := h.in.pool.counts(); return c.live > 0 && c.idle == c.live }, "the ingress's workers to park (now %+v)", h.in.pool.counts())
	before := countGoroutines(workerFunc)
	parked := h.in.pool.counts().live
	h.in.Close()
	if c := h.in.pool.counts(); c.live != 0 || c.idle != 0 {
		t.Errorf("ingress pool after Close: %+v, want no worker", c)
	}
	poll(t, func() bool { return countGoroutines(workerFunc) == before-parked },
		"the ingress's %d parked workers to end at Close (%d worker goroutines, %d before)", parked, countGoroutines(workerFunc), before)
	// A stream after Close still works, its drains on goroutines that end
	// with them.
	echoBidi(ctx, t, cc, testMessages(4))
	poll(t, func() bool { c := h.in.pool.counts(); return c.live == 0 && c.idle == 0 }, "no ingress worker after Close (now %+v)", h.in.pool.counts())
	// expectWorkersEnd: the egress's workers end with its release.
}

// TestSinkDrainsNeverWait blocks one Sink's drain in its target on a pool
// whose one parked worker it took: another Sink's calls still run at once,
// on a new worker, and both workers park when done.
func TestSinkDrainsNeverWait(t *testing.T) {
	noWorkersLeft(t)
	pool := newWorkers()
	pool.idlePeriod = time.Hour
	defer func() {
		pool.close()
		poll(t, func() bool { return countGoroutines(workerFunc)+countGoroutines(janitorFunc) == 0 }, "the pool's goroutines to end")
	}()
	before := liveSinks.Load()
	newSinkClient := func(tg target) capnp.Client {
		liveSinks.Add(1)
		return capnp.NewClient(newSinkHook(&sinkServer{t: tg, maxMsg: 1 << 20, maxMD: DefaultMaxMetadataSize}, pool))
	}
	// One worker parked, as after a stream's earlier messages.
	warm := newSinkClient(&recordTarget{onMessage: func(f *frame) { f.free() }})
	ret := &doneReturner{done: make(chan struct{})}
	recvSinkSend(t, warm, []byte("warm"), ret)
	<-ret.done
	warm.Release()
	poll(t, func() bool { return pool.counts().idle == 1 }, "the first worker to park (now %+v)", pool.counts())

	stuck := &gatedTarget{gate: make(chan struct{})}
	a := newSinkClient(stuck)
	aRet := &doneReturner{done: make(chan struct{})}
	recvSinkSend(t, a, []byte("a"), aRet) // takes the parked worker and blocks in the target
	poll(t, func() bool { return pool.counts().idle == 0 }, "the blocked drain to take the parked worker")

	var got [][]byte
	other := newSinkClient(&recordTarget{onMessage: func(f *frame) { got = append(got, f.data.Materialize()); f.free() }})
	for i := range 3 {
		r := &doneReturner{done: make(chan struct{})}
		recvSinkSend(t, other, []byte{byte('0' + i)}, r)
		select {
		case <-r.done:
		case <-time.After(20 * time.Second):
			t.Fatalf("another Sink's call %d waited for the blocked drain", i)
		}
	}
	if fmt.Sprintf("%s", got) != "[0 1 2]" {
		t.Errorf("the other Sink's target got %s, want [0 1 2]", got)
	}
	select {
	case <-aRet.done:
		t.Fatal("the blocked Sink's call returned before its target let it")
	default:
	}
	if c := pool.counts(); c.started != 2 {
		t.Errorf("pool with one drain blocked: %+v, want 2 workers started", c)
	}
	close(stuck.gate)
	<-aRet.done
	a.Release()
	other.Release()
	poll(t, func() bool { return liveSinks.Load() == before }, "the Sinks to shut down")
	poll(t, func() bool { c := pool.counts(); return c.idle == 2 && c.live == 2 }, "both workers to park (now %+v)", pool.counts())
}

// TestSinkDrainBusyAtClose closes a pool while a drain runs on one of its
// workers and another worker is parked: the parked one ends at once, the
// busy one when its drain returns, and the Sink still gets its calls.
func TestSinkDrainBusyAtClose(t *testing.T) {
	noWorkersLeft(t)
	pool := newWorkers()
	pool.idlePeriod = time.Hour
	before := liveSinks.Load()
	const baseline = 0
	newSinkClient := func(tg target) capnp.Client {
		liveSinks.Add(1)
		return capnp.NewClient(newSinkHook(&sinkServer{t: tg, maxMsg: 1 << 20, maxMD: DefaultMaxMetadataSize}, pool))
	}
	// Two workers: a blocked drain holds the first while the second runs
	// another Sink's call and parks.
	stuck := &gatedTarget{gate: make(chan struct{})}
	a := newSinkClient(stuck)
	aRet := &doneReturner{done: make(chan struct{})}
	recvSinkSend(t, a, []byte("a"), aRet)
	b := newSinkClient(&recordTarget{onMessage: func(f *frame) { f.free() }})
	bRet := &doneReturner{done: make(chan struct{})}
	recvSinkSend(t, b, []byte("b"), bRet)
	<-bRet.done
	poll(t, func() bool { c := pool.counts(); return c.idle == 1 && c.live == 2 }, "one worker parked, one busy (now %+v)", pool.counts())

	pool.close()
	poll(t, func() bool { return countGoroutines(workerFunc) == baseline+1 }, "the parked worker to end at close, the busy one to stay (%d worker goroutines)", countGoroutines(workerFunc))
	if c := pool.counts(); c.live != 1 || c.idle != 0 {
		t.Errorf("pool closed with one drain busy: %+v, want 1 live, none parked", c)
	}
	poll(t, func() bool { return countGoroutines(janitorFunc) == 0 }, "the janitor to end at close")
	// The blocked Sink's next call queues behind the running one.
	a2 := &doneReturner{done: make(chan struct{})}
	recvSinkSend(t, a, []byte("a2"), a2)
	close(stuck.gate)
	<-aRet.done
	<-a2.done
	if got := stuck.events(); fmt.Sprint(got) != "[a a2]" {
		t.Errorf("blocked Sink's target got %v, want [a a2]", got)
	}
	poll(t, func() bool { return countGoroutines(workerFunc) == baseline }, "the busy worker to end once its drain returned (%d worker goroutines)", countGoroutines(workerFunc))
	if c := pool.counts(); c.live != 0 || c.idle != 0 {
		t.Errorf("pool after its last drain: %+v, want none live", c)
	}
	// A closed pool still runs drains, each on a goroutine that ends.
	r := &doneReturner{done: make(chan struct{})}
	recvSinkSend(t, b, []byte("late"), r)
	<-r.done
	a.Release()
	b.Release()
	poll(t, func() bool { return liveSinks.Load() == before }, "the Sinks to shut down")
	poll(t, func() bool { return countGoroutines(workerFunc) == baseline }, "no worker left")
}

// noWorkersLeft waits until the workers of earlier tests' pools (closed by
// their cleanups; a busy one ends as its job returns) are gone, so that
// every worker goroutine is this test's.
func noWorkersLeft(t *testing.T) {
	t.Helper()
	poll(t, func() bool { return countGoroutines(workerFunc) == 0 }, "earlier tests' workers to end (%d left)", countGoroutines(workerFunc))
}

// BenchmarkSinkPingPong delivers Sink.send calls one at a time, each once
// the previous one returned, as on a ping-pong stream: every call finds
// the queue idle and starts a drain, on a goroutine of its own
// ("goroutine") or on a pool's parked worker ("pooled"). The target goes
// about 10 KiB deep, as delivering to gRPC does.
func BenchmarkSinkPingPong(b *testing.B) {
	pool := newWorkers()
	defer pool.close()
	tg := &recordTarget{onMessage: func(f *frame) { deep(40); f.free() }}
	data := make([]byte, 1024)
	for _, bc := range []struct {
		name string
		pool *workers
	}{{"goroutine", nil}, {"pooled", pool}} {
		b.Run(bc.name, func(b *testing.B) {
			liveSinks.Add(1)
			sink := capnp.NewClient(newSinkHook(&sinkServer{t: tg, maxMsg: 1 << 20, maxMD: DefaultMaxMetadataSize}, bc.pool))
			defer sink.Release()
			b.ReportAllocs()
			cpu := cputime.Start()
			for b.Loop() {
				ret := &doneReturner{done: make(chan struct{})}
				recvSinkSend(b, sink, data, ret)
				<-ret.done
			}
			b.ReportMetric(cpu.MicrosPer(float64(b.N)), "cpu-us/op")
		})
	}
}
