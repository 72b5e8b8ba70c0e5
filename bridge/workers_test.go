package bridge

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Functions of the egress's worker goroutines, as goroutine dumps name them.
const (
	workerFunc  = "github.com/vatcar/vatcar/bridge.(*workers).run"
	janitorFunc = "github.com/vatcar/vatcar/bridge.(*workers).janitor"
)

// expectWorkersEnd makes the test, once every cleanup registered after this
// call has run (the hop's: its egress released), wait until no egress
// worker or janitor goroutine is left. Tests do not run in parallel here,
// so any such goroutine is this test's. Tests that use it make their
// pool's idle period longer than the wait, so only the release can end
// them.
func expectWorkersEnd(t *testing.T) {
	t.Cleanup(func() {
		poll(t, func() bool { return countGoroutines(workerFunc)+countGoroutines(janitorFunc) == 0 },
			"egress workers to end once the egress is released (%d workers, %d janitors)",
			countGoroutines(workerFunc), countGoroutines(janitorFunc))
	})
}

// TestEgressWorkersReused makes calls one at a time, each once the previous
// call's worker has parked: every call runs on that one worker. Both sides
// know Echo as unary: a call the ingress sent as a stream (its half-close
// late) would run the open handler and the request Sink's drain on the
// pool at once, on two workers.
func TestEgressWorkersReused(t *testing.T) {
	expectWorkersEnd(t)
	b := newBackend(t)
	h := knownHop(t, b.addr, testKinds, hopConfig{})
	h.eg.pool.idlePeriod = time.Hour // before any call starts the janitor
	cc := dial(t, h.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const calls = 20
	for i := range calls {
		if i > 0 {
			poll(t, func() bool { return h.eg.pool.counts().idle == 1 }, "call %d's worker to park", i-1)
		}
		req := []byte{byte(i)}
		got, err := invoke(ctx, cc, "/t.T/Echo", req)
		if err != nil || string(got) != string(req) {
			t.Fatalf("call %d: got %q, %v; want %q", i, got, err, req)
		}
	}
	if c := h.eg.pool.counts(); c.started != 1 || c.live != 1 {
		t.Errorf("after %d calls: %d workers started, %d live; want 1 and 1", calls, c.started, c.live)
	}
}

// TestEgressWorkersNeverWait holds more blocking calls at once than the pool
// keeps parked workers: each starts at once on a worker of its own (none
// waits for another to end), and when they end the pool keeps
// maxIdleWorkers of their goroutines. Both sides know /t.T/Hang as unary,
// so each handler blocks until its backend call ends (an open handler
// returns once the stream is set up).
func TestEgressWorkersNeverWait(t *testing.T) {
	expectWorkersEnd(t)
	b := newBackend(t)
	h := knownHop(t, b.addr, testKinds, hopConfig{})
	h.eg.pool.idlePeriod = time.Hour // before any call starts the janitor
	cc := dial(t, h.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const calls = maxIdleWorkers + 16
	hung, release := context.WithCancel(ctx)
	var wg sync.WaitGroup
	errs := make(chan error, calls)
	for range calls {
		wg.Go(func() {
			_, err := invoke(hung, cc, "/t.T/Hang", []byte("x"))
			errs <- err
		})
	}
	for range calls {
		waitStarted(t, b) // every call reached the backend while the others block
	}
	if c := h.eg.pool.counts(); c.started != calls || c.live != calls || c.idle != 0 {
		t.Errorf("%d calls blocked: %d workers started, %d live, %d parked; want %d, %d, 0", calls, c.started, c.live, c.idle, calls, calls)
	}
	release()
	wg.Wait()
	close(errs)
	for err := range errs {
		if status.Code(err) != codes.Canceled {
			t.Errorf("blocked call ended with %v, want Canceled", err)
		}
	}
	for range calls {
		if err := waitEnded(t, b); !errors.Is(err, context.Canceled) {
			t.Errorf("backend saw %v, want context.Canceled", err)
		}
	}
	poll(t, func() bool { c := h.eg.pool.counts(); return c.idle == maxIdleWorkers && c.live == maxIdleWorkers },
		"%d workers parked and live, the rest ended (now %+v)", maxIdleWorkers, h.eg.pool.counts())
	poll(t, func() bool { return countGoroutines(workerFunc) == maxIdleWorkers }, "worker goroutines down to %d (now %d)", maxIdleWorkers, countGoroutines(workerFunc))
}

// TestEgressWorkersIdleEnd checks that parked workers end once unused for
// the pool's idle period, and the janitor with them, while the egress
// lives on and takes new calls. Both sides know Echo as unary, so no
// call streams: the ingress's pool, whose workers idle for longer, runs
// nothing.
func TestEgressWorkersIdleEnd(t *testing.T) {
	expectWorkersEnd(t)
	b := newBackend(t)
	h := knownHop(t, b.addr, testKinds, hopConfig{})
	h.eg.pool.idlePeriod = 10 * time.Millisecond // before any call starts the janitor
	cc := dial(t, h.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for round := range 2 {
		var wg sync.WaitGroup
		for i := range 4 {
			wg.Go(func() {
				if _, err := invoke(ctx, cc, "/t.T/Echo", []byte{byte(i)}); err != nil {
					t.Errorf("round %d call %d: %v", round, i, err)
				}
			})
		}
		wg.Wait()
		poll(t, func() bool { c := h.eg.pool.counts(); return c.live == 0 && !c.janitor },
			"round %d: idle workers and the janitor to end (now %+v)", round, h.eg.pool.counts())
		poll(t, func() bool { return countGoroutines(workerFunc)+countGoroutines(janitorFunc) == 0 },
			"round %d: worker and janitor goroutines to end (ingress pool %+v)", round, h.in.pool.counts())
	}
}

// TestWorkersClosed checks that a closed pool still serves calls, each on
// a goroutine that ends with it, and that a second close does nothing.
func TestWorkersClosed(t *testing.T) {
	p := newWorkers()
	p.close()
	p.close()
	ctx := context.Background()
	m := serviceMethods[0].Method
	for range 3 {
		ret := &doneReturner{done: make(chan struct{})}
		startCall(ctx, capnp.Recv{Method: m, ReleaseArgs: func() {}, Returner: ret}, p, nil, func(*egress, context.Context, *capCall) error { return nil })
		<-ret.done
	}
	poll(t, func() bool { return countGoroutines(workerFunc) == 0 }, "workers of a closed pool to end")
	if c := p.counts(); c.started != 3 || c.live != 0 || c.idle != 0 || c.janitor {
		t.Errorf("closed pool after 3 calls: %+v; want 3 started, none live or parked, no janitor", c)
	}
}

// TestWorkerGoexitCounted: a handler that ends its goroutine
// (runtime.Goexit) takes its worker with it; the pool counts it out, so
// the janitor ends once no worker is left.
func TestWorkerGoexitCounted(t *testing.T) {
	p := newWorkers()
	p.idlePeriod = 10 * time.Millisecond
	defer p.close()
	m := serviceMethods[0].Method
	exited := make(chan struct{})
	startCall(context.Background(), capnp.Recv{Method: m, ReleaseArgs: func() {}, Returner: &doneReturner{done: make(chan struct{})}}, p, nil,
		func(*egress, context.Context, *capCall) error {
			close(exited)
			runtime.Goexit()
			return nil
		})
	<-exited
	poll(t, func() bool { c := p.counts(); return c.live == 0 && !c.janitor },
		"the exited worker counted out and the janitor ended (now %+v)", p.counts())
	poll(t, func() bool { return countGoroutines(workerFunc)+countGoroutines(janitorFunc) == 0 },
		"worker and janitor goroutines to end")
}
