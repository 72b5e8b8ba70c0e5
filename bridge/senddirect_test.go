package bridge

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	"capnproto.org/go/capnp/v3/rpc"
	"google.golang.org/grpc/mem"

	"github.com/vatcar/vatcar/internal/testnet"
	"github.com/vatcar/vatcar/proto/captp"
	"github.com/vatcar/vatcar/vat/engine"
)

// orderSink is a Sink server that records each message (one chunk each) in
// the order its sends arrive; a send of "fail" fails.
type orderSink struct {
	mu     sync.Mutex
	got    []string
	closed bool
	sends  uint64 // as the close named them
}

func (s *orderSink) Headers(context.Context, captp.Sink_headers) error { return nil }
func (s *orderSink) Close(_ context.Context, call captp.Sink_close) error {
	s.mu.Lock()
	s.closed, s.sends = true, call.Args().Sends()
	s.mu.Unlock()
	return nil
}

func (s *orderSink) Send(_ context.Context, call captp.Sink_send) error {
	l, err := call.Args().Chunks()
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := 0; i < l.Len(); i++ {
		d, _ := l.At(i).Data()
		s.got = append(s.got, string(d))
		if string(d) == "fail" {
			return exc.New(exc.Overloaded, "", "too busy")
		}
	}
	return nil
}

func (s *orderSink) received() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.got...)
}

// gateService is a GrpcService whose open answers with sink once gate is
// closed.
type gateService struct {
	gate chan struct{}
	sink captp.Sink
}

func (g *gateService) Unary(context.Context, captp.GrpcService_unary) error {
	return exc.New(exc.Unimplemented, "", "no unary")
}

func (g *gateService) Open(ctx context.Context, call captp.GrpcService_open) error {
	select {
	case <-g.gate:
	case <-ctx.Done():
		return ctx.Err()
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetUp(g.sink.AddRef())
}

// gateSetup serves a gateService over loopback TCP, by the engine or by
// go-capnp, to an engine client, and returns the client's service and
// connection.
func gateSetup(t *testing.T, goCapnp bool, svc *gateService) (captp.GrpcService, *engine.Conn) {
	t.Helper()
	return servePair(t, goCapnp, capnp.Client(captp.GrpcService_ServerToClient(svc)))
}

// servePair serves boot (taken) over loopback TCP, by the engine or by
// go-capnp, to an engine client, and returns the client's service and its
// connection; all closes at the end of the test.
func servePair(t *testing.T, goCapnp bool, boot capnp.Client) (captp.GrpcService, *engine.Conn) {
	t.Helper()
	nc, snc := testnet.Pair(t, "tcp")
	var closeServer func()
	if goCapnp {
		c := rpc.NewConn(rpc.NewStreamTransport(snc), &rpc.Options{BootstrapClient: boot})
		closeServer = func() { c.Close() }
	} else {
		c := engine.NewConn(engine.NewStreamCodec(snc, 0), &engine.Options{Bootstrap: boot})
		closeServer = func() { c.Close() }
	}
	client := engine.NewConn(engine.NewStreamCodec(nc, 0), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl := captp.GrpcService(client.Bootstrap(ctx))
	if err := cl.Resolve(ctx); err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	t.Cleanup(func() {
		cl.Release()
		client.Close()
		closeServer()
	})
	return cl, client
}

func msgEvent(s string) event {
	return event{kind: evMsg, msg: frame{data: mem.BufferSlice{mem.SliceBuffer([]byte(s))}}}
}

// TestSenderDirectAfterPipelined: a sender on up, a Sink pipelined on open's
// results, sends on the normal path until open returns, then on the direct
// path (engine.SendDirect); the far side gets every message in order, with
// engine and go-capnp servers alike.
func TestSenderDirectAfterPipelined(t *testing.T) {
	for _, goCapnp := range []bool{false, true} {
		t.Run(fmt.Sprintf("gocapnp=%v", goCapnp), func(t *testing.T) {
			rec := &orderSink{}
			gs := &gateService{gate: make(chan struct{}), sink: captp.Sink_ServerToClient(rec)}
			defer gs.sink.Release()
			svc, client := gateSetup(t, goCapnp, gs)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			fut, release := svc.Open(ctx, nil)
			defer release()
			up := fut.Up()
			defer up.Release()

			ob := newOutbox(1 << 20)
			var st sendStats
			s := &sender{sink: up, ob: ob, stats: &st}
			ran := make(chan error, 1)
			go func() { ran <- s.run(ctx) }()
			var want []string
			// One message per send: put the next once the last went.
			put := func(msg string) {
				want = append(want, msg)
				n := st.sends.Load()
				ob.put(ctx, msgEvent(msg))
				poll(t, func() bool { return st.sends.Load() > n }, "send of %q", msg)
			}
			for i := range 10 {
				put(strconv.Itoa(i))
			}
			if d := st.direct.Load(); d != 0 {
				t.Fatalf("%d direct sends before open returned", d)
			}
			close(gs.gate)
			<-fut.Done()
			for i := 10; st.direct.Load() == 0; i++ {
				if i > 10_000 {
					t.Fatal("no direct send after open returned")
				}
				put(strconv.Itoa(i))
			}
			for i := range 10 {
				put("d" + strconv.Itoa(i))
			}
			ob.put(ctx, event{kind: evEnd})
			if err := <-ran; err != nil {
				t.Fatalf("run: %v", err)
			}
			if got := rec.received(); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("received out of order:\n got %v\nwant %v", got, want)
			}
			if d, n := st.direct.Load(), st.sends.Load(); d < 10 || n-d < 10 {
				t.Fatalf("%d direct of %d sends, want at least 10 of each path", d, n)
			}
			// Every send's bytes went back to the window (each direct
			// send returns its own size), and the sender let go of the
			// Sink it held for its direct sends: once the test's own
			// references go, the client holds the bootstrap import only.
			s.win.mu.Lock()
			wb, wc := s.win.bytes, s.win.calls
			s.win.mu.Unlock()
			if wb != 0 || wc != 0 {
				t.Fatalf("window after the end: %d bytes, %d sends in flight, want 0, 0", wb, wc)
			}
			up.Release()
			release()
			poll(t, func() bool { return client.Stats().Imports == 1 }, "the client to hold the bootstrap import only")
		})
	}
}

// TestSenderDirectFailure: a failed direct send fails the sender, at the
// next send or at close, with the callee's exception.
func TestSenderDirectFailure(t *testing.T) {
	for _, atClose := range []bool{true, false} {
		t.Run(fmt.Sprintf("atClose=%v", atClose), func(t *testing.T) {
			rec := &orderSink{}
			gs := &gateService{gate: make(chan struct{}), sink: captp.Sink_ServerToClient(rec)}
			close(gs.gate)
			defer gs.sink.Release()
			svc, _ := gateSetup(t, false, gs)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			fut, release := svc.Open(ctx, nil)
			defer release()
			res, err := fut.Struct()
			if err != nil {
				t.Fatal(err)
			}
			up := res.Up()

			ob := newOutbox(1 << 20)
			var st sendStats
			s := &sender{sink: up, ob: ob, stats: &st}
			ran := make(chan error, 1)
			go func() { ran <- s.run(ctx) }()
			ob.put(ctx, msgEvent("fail"))
			if atClose {
				ob.put(ctx, event{kind: evEnd})
			} else {
				// Messages until one's send reports the failure.
				poll(t, func() bool {
					select {
					case err := <-ran:
						ran <- err
						return true
					default:
						ob.put(ctx, msgEvent("more"))
						return false
					}
				}, "the sender to fail")
			}
			err = <-ran
			if err == nil || !strings.Contains(err.Error(), "too busy") || exc.TypeOf(errors.Unwrap(err)) != exc.Overloaded {
				t.Fatalf("run: %v, want the send's exception", err)
			}
			if d := st.direct.Load(); d == 0 {
				t.Fatal("no direct send")
			}
			// A close names the sends made before it, for the far
			// Sink to check (TestSinkCloseCountsSends).
			rec.mu.Lock()
			closed, sends := rec.closed, rec.sends
			rec.mu.Unlock()
			if closed && sends != uint64(st.sends.Load()) {
				t.Errorf("the close named %d sends, the sender made %d", sends, st.sends.Load())
			}
			ob.stop()
		})
	}
}

// TestWindow: a send waits while the bytes in flight and its own exceed
// flowWindow, unless none are in flight; the first failure is returned by
// the next acquire and by drain.
func TestWindow(t *testing.T) {
	var w window
	done, cancel := context.WithCancel(context.Background())
	cancel() // acquire returns its error only where it would wait
	if err := w.acquire(done, flowWindow+1); err != nil {
		t.Fatalf("alone, a send larger than the window: %v", err)
	}
	if err := w.acquire(done, 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("over the window: %v, want to wait", err)
	}
	w.release(flowWindow+1, nil)
	if err := w.acquire(done, flowWindow/2); err != nil {
		t.Fatal(err)
	}
	if err := w.acquire(done, flowWindow/2); err != nil {
		t.Fatalf("up to the window: %v", err)
	}
	if err := w.acquire(done, 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("one byte over the window: %v, want to wait", err)
	}
	if err := w.drain(done); !errors.Is(err, context.Canceled) {
		t.Fatalf("drain with sends in flight: %v, want to wait", err)
	}
	// A waiting acquire goes once enough returns.
	got := make(chan error, 1)
	go func() { got <- w.acquire(context.Background(), flowWindow/2) }()
	fail := errors.New("send failed")
	w.release(flowWindow/2, fail)
	if err := <-got; err != fail {
		t.Fatalf("acquire after a failure: %v, want %v", err, fail)
	}
	w.release(flowWindow/2, errors.New("second failure"))
	if err := w.drain(context.Background()); err != fail {
		t.Fatalf("drain: %v, want the first failure", err)
	}

	// However small, at most maxSendsInFlight sends are in flight.
	var c window
	for i := range maxSendsInFlight {
		if err := c.acquire(done, 1); err != nil {
			t.Fatalf("send %d of 1 byte: %v", i, err)
		}
	}
	if err := c.acquire(done, 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("send %d in flight: %v, want to wait", maxSendsInFlight+1, err)
	}
	c.release(1, nil)
	if err := c.acquire(done, 1); err != nil {
		t.Fatalf("a send once one returned: %v", err)
	}
}
