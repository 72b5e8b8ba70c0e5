package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
)

// kind is how a scenario drives the backend.
type kind int

const (
	unary    kind = iota // closed loop: Concurrency workers, one call in flight each
	stream               // one server stream at a time, messages of Size bytes
	pingpong             // one bidi stream, one message in flight: round trips
)

// scenario is one load shape of the issue.
type scenario struct {
	Name        string
	Kind        kind
	Size        int // bytes per message
	Concurrency int // calls in flight
}

var allScenarios = []scenario{
	{"unary-100B-c1", unary, 100, 1},
	{"unary-100B-c16", unary, 100, 16},
	{"unary-100B-c64", unary, 100, 64},
	{"unary-16KiB-c16", unary, 16 << 10, 16},
	{"unary-4MiB-c4", unary, 4 << 20, 4},
	{"stream-1KiB", stream, 1 << 10, 1},
	{"pingpong-c1", pingpong, 100, 1},
}

// streamCount is how many messages one Stream call asks for; the worker cancels the
// call when the window ends.
const streamCount = 1 << 20

// window is a scenario's timeline: load starts at once, no operation starts after
// end, and every operation that completes at or after warm counts, however long it
// takes. A worker whose operations outlast the window (a 4 MiB call on a loaded
// machine) thus still counts what it did: the measured time runs from warm to the
// last counted completion, or to end if that comes later. So a result never depends
// on an operation fitting inside a fixed time.
type window struct{ warm, end time.Time }

// counts reports whether an operation that completed at t counts.
func (w window) counts(t time.Time) bool { return !t.Before(w.warm) }

// tally is what one worker saw inside the window.
type tally struct {
	ops    int             // calls, messages or round trips
	bytes  int64           // payload bytes received
	lat    []time.Duration // one per op, except for stream
	errs   int
	lastEr error
	last   time.Time // the latest counted completion
}

// done counts one operation that completed at now with n bytes, and lat when the
// scenario has latencies (lat > 0).
func (t *tally) done(now time.Time, n int, lat time.Duration) {
	t.ops++
	t.bytes += int64(n)
	if lat > 0 {
		t.lat = append(t.lat, lat)
	}
	if now.After(t.last) {
		t.last = now
	}
}

func (t *tally) fail(err error) {
	t.errs++
	t.lastEr = err
}

func (t *tally) add(o tally) {
	t.ops += o.ops
	t.bytes += o.bytes
	t.lat = append(t.lat, o.lat...)
	t.errs += o.errs
	if o.lastEr != nil {
		t.lastEr = o.lastEr
	}
	if o.last.After(t.last) {
		t.last = o.last
	}
}

// measurement is a scenario's result on one path, before it becomes a row.
type measurement struct {
	tally
	seconds float64
	cpu     time.Duration // CPU time of the path's proxies inside the window
	harness time.Duration // CPU time of this process (load and backend), the same span
	rss     int64         // RSS of the path's proxies at the end of the window
	// rt0 and rt1 are the Go proxies' runtime figures at the window's start
	// and end (runScenario's sample; nil without).
	rt0, rt1 []runtimeSample
}

// stallGrace is how long a scenario's operations may still run after its window
// before the harness cancels them and counts them as failed: far beyond what any
// operation takes on a loaded machine (a 4 MiB call, well under a second), it only
// keeps a proxy that stalls a call for good (HAProxy with a larger HTTP/2 window did)
// from hanging the whole run. A variable for the test.
var stallGrace = 2 * time.Minute

// errStalled is the last error of a scenario whose operations outlasted stallGrace.
var errStalled = errors.New("operations still running long after the window: cancelled")

// runScenario drives sc through cc for warmup+duration and measures the window after
// the warmup, sampling the CPU of procs from warm until the last operation ended and
// their RSS at end. at, when not nil, is
// called once the window starts, with its length (profiling hooks in there).
func runScenario(ctx context.Context, cc *grpc.ClientConn, sc scenario, warmup, duration time.Duration, procs []int, at func(time.Duration), sample func() []runtimeSample) measurement {
	start := time.Now()
	w := window{warm: start.Add(warmup), end: start.Add(warmup + duration)}
	outer := ctx
	stallAt := w.end.Add(stallGrace)
	ctx, cancel := context.WithDeadline(ctx, stallAt)
	defer cancel()
	workers := sc.Concurrency
	tallies := make([]tally, workers)
	var wg sync.WaitGroup
	for i := range workers {
		wg.Go(func() {
			switch sc.Kind {
			case unary:
				tallies[i] = unaryWorker(ctx, cc, sc.Size, w)
			case stream:
				tallies[i] = streamWorker(ctx, cc, sc.Size, w)
			case pingpong:
				tallies[i] = pingpongWorker(ctx, cc, sc.Size, w)
			}
		})
	}
	var m measurement
	sleepUntil(ctx, w.warm)
	cpu0, self0 := cpuOf(procs), cpuOf([]int{os.Getpid()})
	if sample != nil {
		m.rt0 = sample()
	}
	if at != nil {
		at(duration)
	}
	sleepUntil(ctx, w.end)
	m.rss = rssOf(procs)
	if sample != nil {
		m.rt1 = sample()
	}
	wg.Wait()
	m.cpu = cpuOf(procs) - cpu0
	m.harness = cpuOf([]int{os.Getpid()}) - self0
	for _, t := range tallies {
		m.add(t)
	}
	// The clock, not only ctx: a server that saw the deadline (grpc-timeout) may end the
	// calls a moment before ctx's own timer fires.
	if outer.Err() == nil && (ctx.Err() != nil || !time.Now().Before(stallAt)) {
		m.fail(fmt.Errorf("%w (%v after the window)", errStalled, stallGrace))
	}
	m.seconds = duration.Seconds()
	if m.last.After(w.end) {
		m.seconds = m.last.Sub(w.warm).Seconds()
	}
	return m
}

// sleepUntil waits for the clock to reach t: the load runs meanwhile.
func sleepUntil(ctx context.Context, t time.Time) {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-ctx.Done():
	case <-timer.C:
	}
}

func unaryWorker(ctx context.Context, cc *grpc.ClientConn, size int, w window) tally {
	var t tally
	req := make([]byte, size) // read-only: gRPC may hold it after a call returns
	var resp []byte
	for ctx.Err() == nil {
		t0 := time.Now()
		if !t0.Before(w.end) {
			break
		}
		err := cc.Invoke(ctx, methodUnary, &req, &resp)
		t1 := time.Now()
		if !w.counts(t1) {
			continue
		}
		if err == nil && len(resp) != size {
			err = fmt.Errorf("echo of %d bytes returned %d", size, len(resp))
		}
		if err != nil {
			t.fail(err)
			continue
		}
		t.done(t1, len(resp), max(t1.Sub(t0), 1))
	}
	return t
}

func streamWorker(ctx context.Context, cc *grpc.ClientConn, size int, w window) tally {
	var t tally
	req := streamRequest(size, streamCount)
	for ctx.Err() == nil && time.Now().Before(w.end) {
		sctx, cancel := context.WithCancel(ctx)
		err := func() error {
			s, err := cc.NewStream(sctx, &grpc.StreamDesc{ServerStreams: true}, methodStream)
			if err != nil {
				return err
			}
			if err := s.SendMsg(&req); err != nil {
				return err
			}
			if err := s.CloseSend(); err != nil {
				return err
			}
			var msg []byte
			for {
				err := s.RecvMsg(&msg)
				now := time.Now()
				if errors.Is(err, io.EOF) {
					return nil
				}
				if err != nil {
					return err
				}
				if w.counts(now) {
					t.done(now, len(msg), 0)
				}
				// The message that crossed end counts; so a stream whose
				// first message comes late still measures one.
				if !now.Before(w.end) && t.ops > 0 {
					return nil // cancel below ends the call
				}
			}
		}()
		cancel()
		if err != nil && ctx.Err() == nil {
			t.fail(err)
		}
	}
	return t
}

func pingpongWorker(ctx context.Context, cc *grpc.ClientConn, size int, w window) tally {
	var t tally
	req := make([]byte, size)
	for ctx.Err() == nil && time.Now().Before(w.end) {
		sctx, cancel := context.WithCancel(ctx)
		err := func() error {
			s, err := cc.NewStream(sctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, methodPingPong)
			if err != nil {
				return err
			}
			var resp []byte
			for {
				t0 := time.Now()
				if !t0.Before(w.end) {
					if err := s.CloseSend(); err != nil {
						return err
					}
					if err := s.RecvMsg(&resp); !errors.Is(err, io.EOF) {
						return fmt.Errorf("pingpong end: got %v, want EOF", err)
					}
					return nil
				}
				if err := s.SendMsg(&req); err != nil {
					return err
				}
				if err := s.RecvMsg(&resp); err != nil {
					return err
				}
				t1 := time.Now()
				if len(resp) != size {
					return fmt.Errorf("pingpong echo of %d bytes returned %d", size, len(resp))
				}
				if w.counts(t1) {
					t.done(t1, len(resp), max(t1.Sub(t0), 1))
				}
			}
		}()
		cancel()
		if err != nil && ctx.Err() == nil {
			t.fail(err)
		}
	}
	return t
}

// percentile returns the p-th percentile (0 < p < 100) of lat, sorting it.
func percentile(lat []time.Duration, p float64) time.Duration {
	if len(lat) == 0 {
		return 0
	}
	if !slices.IsSorted(lat) {
		slices.Sort(lat)
	}
	i := int(float64(len(lat))*p/100 + 0.5)
	return lat[min(max(i-1, 0), len(lat)-1)]
}
