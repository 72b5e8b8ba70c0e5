package bridge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	"capnproto.org/go/capnp/v3/rpc"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/vatcar/vatcar/proto/captp"
)

// waitStarted returns the context of the next backend call to start.
func waitStarted(t *testing.T, b *backend) context.Context {
	t.Helper()
	select {
	case ctx := <-b.started:
		return ctx
	case <-time.After(20 * time.Second):
		t.Fatal("backend call did not start")
		return nil
	}
}

// waitEnded returns how the next backend call ended.
func waitEnded(t *testing.T, b *backend) error {
	t.Helper()
	select {
	case err := <-b.ended:
		return err
	case <-time.After(20 * time.Second):
		t.Fatal("backend call did not end")
		return nil
	}
}

// expectBackendCanceled fails the test unless b's call ends, within
// waitEnded's bound, with context.Canceled.
func expectBackendCanceled(t *testing.T, b *backend) {
	t.Helper()
	if err := waitEnded(t, b); !errors.Is(err, context.Canceled) {
		t.Errorf("backend saw %v, want context.Canceled", err)
	}
}

// TestCancelReachesBackend cancels calls on both paths (unary-shaped and
// streaming) and checks that the backend's context is cancelled.
func TestCancelReachesBackend(t *testing.T) {
	b := newBackend(t)
	h := newHop(t, b.addr, hopConfig{})
	cc := dial(t, h.addr)
	for _, halfClose := range []bool{true, false} {
		t.Run(fmt.Sprint("halfClose=", halfClose), func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			s := rawStream(ctx, t, cc, "/t.T/Hang")
			s.SendMsg([]byte("x"))
			if halfClose {
				s.CloseSend()
			}
			waitStarted(t, b)
			cancel()
			expectBackendCanceled(t, b)
			if _, err := recvAll(s); status.Code(err) != codes.Canceled {
				t.Errorf("client got %v, want Canceled", err)
			}
		})
	}
}

// TestDeadlineReachesBackend checks that the remaining timeout becomes the
// backend's deadline, on both paths.
func TestDeadlineReachesBackend(t *testing.T) {
	b := newBackend(t)
	h := newHop(t, b.addr, hopConfig{})
	cc := dial(t, h.addr)
	for _, halfClose := range []bool{true, false} {
		t.Run(fmt.Sprint("halfClose=", halfClose), func(t *testing.T) {
			const timeout = 500 * time.Millisecond
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			s := rawStream(ctx, t, cc, "/t.T/Hang")
			s.SendMsg([]byte("x"))
			if halfClose {
				s.CloseSend()
			}
			checkBackendDeadline(t, b, timeout)
			if _, err := recvAll(s); status.Code(err) != codes.DeadlineExceeded {
				t.Errorf("client got %v, want DeadlineExceeded", err)
			}
		})
	}
}

// TestConnectionLost closes the capnp connection under running calls: the
// clients get UNAVAILABLE and the backend calls are cancelled.
func TestConnectionLost(t *testing.T) {
	b := newBackend(t)
	h := newHop(t, b.addr, hopConfig{})
	cc := dial(t, h.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var streams []grpc.ClientStream
	for _, halfClose := range []bool{true, false} {
		s := rawStream(ctx, t, cc, "/t.T/Hang")
		s.SendMsg([]byte("x"))
		if halfClose {
			s.CloseSend()
		}
		waitStarted(t, b)
		streams = append(streams, s)
	}
	h.client.Close()
	for i, s := range streams {
		if _, err := recvAll(s); status.Code(err) != codes.Unavailable {
			t.Errorf("stream %d: client got %v, want Unavailable", i, err)
		}
	}
	for range streams {
		expectBackendCanceled(t, b)
	}
}

// TestOverloaded fills the egress's admission limit: one more call fails
// with RESOURCE_EXHAUSTED, and calls work again once slots free up.
func TestOverloaded(t *testing.T) {
	b := newBackend(t)
	h := newHop(t, b.addr, hopConfig{egress: EgressConfig{MaxConcurrentCalls: 2}})
	cc := dial(t, h.addr)
	ctx, cancel := context.WithCancel(context.Background())
	for range 2 {
		s := rawStream(ctx, t, cc, "/t.T/Hang")
		s.SendMsg([]byte("x"))
		waitStarted(t, b)
	}
	for _, halfClose := range []bool{true, false} {
		s := rawStream(context.Background(), t, cc, "/t.T/Echo")
		s.SendMsg([]byte("x"))
		if halfClose {
			s.CloseSend()
		}
		if _, err := recvAll(s); status.Code(err) != codes.ResourceExhausted {
			t.Errorf("halfClose=%v: call over the limit got %v, want ResourceExhausted", halfClose, err)
		}
	}
	cancel()
	waitEnded(t, b)
	waitEnded(t, b)
	// The slots are freed once the final status went down; poll.
	deadline := time.Now().Add(20 * time.Second)
	for {
		s := rawStream(context.Background(), t, cc, "/t.T/Echo")
		s.SendMsg([]byte("x"))
		s.CloseSend()
		_, err := recvAll(s)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("calls still fail after the slots were freed: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDirectorErrors checks that a director's gRPC status passes unchanged
// and other errors go through Status.
func TestDirectorErrors(t *testing.T) {
	b := newBackend(t)
	h := newHop(t, b.addr, hopConfig{})
	cases := []struct {
		err  error
		code codes.Code
	}{
		{status.Error(codes.PermissionDenied, "policy says no"), codes.PermissionDenied},
		{errors.New("restore: Unknown persistent service ID"), codes.NotFound},
	}
	for _, c := range cases {
		t.Run(c.code.String(), func(t *testing.T) {
			in, err := NewIngress(IngressConfig{Director: func(context.Context, string) (captp.GrpcService, error) { return captp.GrpcService{}, c.err }})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(in.Close) // after the server stops (cleanups run last first)
			addr := serve(t, func(*grpc.Server) {}, in.ServerOptions()...)
			cc := dial(t, addr)
			err = cc.Invoke(context.Background(), "/t.T/Echo", []byte("x"), new([]byte), grpc.ForceCodecV2(Codec()))
			if status.Code(err) != c.code || c.code == codes.PermissionDenied && status.Convert(err).Message() != "policy says no" {
				t.Errorf("got %v, want %v", err, c.code)
			}
		})
	}
	_ = h
}

// TestStatusDetails checks that status details cross intact.
func TestStatusDetails(t *testing.T) {
	st, err := status.New(codes.Aborted, "with details ✓").WithDetails(&errdetails.ErrorInfo{Reason: "R", Domain: "d", Metadata: map[string]string{"k": "v"}})
	if err != nil {
		t.Fatal(err)
	}
	backend := serve(t, func(s *grpc.Server) {}, grpc.UnknownServiceHandler(func(any, grpc.ServerStream) error { return st.Err() }))
	h := newHop(t, backend, hopConfig{})
	cc := dial(t, h.addr)
	for _, halfClose := range []bool{true, false} {
		s := rawStream(context.Background(), t, cc, "/t.T/Any")
		s.SendMsg([]byte("x"))
		if halfClose {
			s.CloseSend()
		}
		_, err := recvAll(s)
		got := status.Convert(err)
		if got.Code() != codes.Aborted || got.Message() != st.Message() || len(got.Details()) != 1 {
			t.Fatalf("got %v %q %v, want %v", got.Code(), got.Message(), got.Details(), st)
		}
		if info, ok := got.Details()[0].(*errdetails.ErrorInfo); !ok || info.Reason != "R" || info.Metadata["k"] != "v" {
			t.Errorf("details = %v", got.Details())
		}
	}
}

// TestRequestMetadata checks that request metadata, -bin values and trace
// headers reach the backend unchanged.
func TestRequestMetadata(t *testing.T) {
	got := make(chan metadata.MD, 2)
	backend := serve(t, func(s *grpc.Server) {}, grpc.ForceServerCodecV2(Codec()), grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
		md, _ := metadata.FromIncomingContext(ss.Context())
		got <- md
		return nil
	}))
	h := newHop(t, backend, hopConfig{})
	cc := dial(t, h.addr)
	want := metadata.MD{
		"traceparent":    {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
		"grpc-trace-bin": {string([]byte{0, 1, 2, 0xff, 0x80})},
		"x-request-id":   {"req-1"},
		"x-multi":        {"a", "b"},
		"x-raw-bin":      {string([]byte{0, 0, 0xfe})},
	}
	for _, halfClose := range []bool{true, false} {
		ctx := metadata.NewOutgoingContext(context.Background(), want)
		s := rawStream(ctx, t, cc, "/t.T/Any")
		s.SendMsg([]byte("x"))
		if halfClose {
			s.CloseSend()
		}
		recvAll(s)
		md := <-got
		for k, v := range want {
			if fmt.Sprint(md[k]) != fmt.Sprint(v) {
				t.Errorf("halfClose=%v: backend got %s=%q, want %q", halfClose, k, md[k], v)
			}
		}
	}
}

// TestManyStreamsNoLeak opens and closes 1,000 streams and checks that no
// goroutine and no Sink outlives them.
func TestManyStreamsNoLeak(t *testing.T) {
	b := newBackend(t)
	h := newHop(t, b.addr, hopConfig{})
	cc := dial(t, h.addr)
	echoBidi(context.Background(), t, cc, testMessages(2)) // connect everything first
	queues := countGoroutines("capnproto.org/go/capnp/v3/server.(*Server).handleCalls")
	sinks := liveSinks.Load()
	ignore := goleak.IgnoreCurrent()
	var wg sync.WaitGroup
	for g := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				ctx, cancel := context.WithCancel(context.Background())
				s := rawStream(ctx, t, cc, "/t.T/Echo")
				s.SendMsg([]byte("x"))
				switch (g + i) % 3 {
				case 0: // cancelled mid-stream
					var m []byte
					s.RecvMsg(&m)
					cancel()
				case 1: // half-closed, read to the end
					s.CloseSend()
					recvAll(s)
				case 2: // unary-shaped
					s.CloseSend()
					recvAll(s)
				}
				cancel()
			}
		}()
	}
	wg.Wait()
	// A capnp server keeps one goroutine for its call queue, and Call.Go
	// hands that job to a new one: compare their number, not their ids.
	// The egress and the ingress keep parked workers (their top function
	// is run, waiting for a job) and their janitors until released/closed.
	const queue = "capnproto.org/go/capnp/v3/server.(*Server).handleCalls"
	if err := goleak.Find(ignore, goleak.IgnoreTopFunction(queue), goleak.IgnoreAnyFunction(queue),
		goleak.IgnoreTopFunction(workerFunc), goleak.IgnoreTopFunction(janitorFunc)); err != nil {
		t.Error(err)
	}
	poll(t, func() bool {
		e, i := h.eg.pool.counts(), h.in.pool.counts()
		return e.idle == e.live && e.idle <= maxIdleWorkers && i.idle == i.live && i.idle <= maxIdleWorkers &&
			countGoroutines(workerFunc) == e.live+i.live
	}, "egress and ingress workers all parked, at most %d each (now %+v and %+v, %d goroutines)",
		maxIdleWorkers, h.eg.pool.counts(), h.in.pool.counts(), countGoroutines(workerFunc))
	poll(t, func() bool { return countGoroutines(queue) <= queues }, "capnp server goroutines back to %d", queues)
	poll(t, func() bool { return liveSinks.Load() <= sinks }, "live Sinks back to %d (now %d)", sinks, liveSinks.Load())
}

// countGoroutines returns how many goroutines have fn in their stack.
func countGoroutines(fn string) int {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), fn+"(")
}

// poll waits until cond holds, failing the test after 20 s.
func poll(t testing.TB, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: "+format, args...)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestCallWithoutDownSink checks that the egress refuses calls and attaches
// that bring no response Sink instead of failing on them, and that releasing
// a unary call's Call cancels it.
func TestCallWithoutDownSink(t *testing.T) {
	b := newBackend(t)
	h := newHop(t, b.addr, hopConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	of, release := h.svc.Open(ctx, func(p captp.GrpcService_open_Params) error {
		h, err := p.NewCall()
		if err != nil {
			return err
		}
		return h.SetMethod("/t.T/Echo")
	})
	defer release()
	if _, err := of.Struct(); err == nil || !strings.Contains(err.Error(), ErrNoDownSink.Error()) {
		t.Errorf("open without down: %v, want %v", err, ErrNoDownSink)
	}
	// A unary call whose response streams returns its Call; attaching
	// needs a Sink, and only one.
	uf, release2 := h.svc.Unary(ctx, func(p captp.GrpcService_unary_Params) error {
		h, err := p.NewCall()
		if err != nil {
			return err
		}
		return h.SetMethod("/t.T/Headers")
	})
	var once sync.Once
	releaseUnary := func() { once.Do(release2) }
	defer releaseUnary()
	res, err := uf.Struct()
	if err != nil || !res.HasRest() {
		t.Fatalf("unary to a streaming response: rest %v, %v; want a Call", res.HasRest(), err)
	}
	rest := res.Rest().AddRef()
	attach := func(sink bool) error {
		f, release := rest.Attach(ctx, func(p captp.Call_attach_Params) error {
			if !sink {
				return nil
			}
			return p.SetDown(newSink(&recordTarget{onMessage: func(f *frame) { f.free() }}, 1<<20, DefaultMaxMetadataSize, nil))
		})
		defer release()
		_, err := f.Struct()
		return err
	}
	if err := attach(false); err == nil || !strings.Contains(err.Error(), ErrNoDownSink.Error()) {
		t.Errorf("attach without a Sink: %v, want %v", err, ErrNoDownSink)
	}
	if err := attach(true); err != nil {
		t.Errorf("attach: %v", err)
	}
	if err := attach(true); err == nil || !strings.Contains(err.Error(), ErrAttached.Error()) {
		t.Errorf("second attach: %v, want %v", err, ErrAttached)
	}
	rest.Release() // with the results, the last reference: cancels the call
	releaseUnary()
	if err := waitEnded(t, b); !errors.Is(err, context.Canceled) {
		t.Errorf("backend saw %v after the Call was released, want context.Canceled", err)
	}
}

// TestCancelStreamingResponse cancels a unary-shaped call whose response
// has begun to stream (headers sent): the cancellation reaches the backend
// through the release of the call's up Sink.
func TestCancelStreamingResponse(t *testing.T) {
	b := newBackend(t)
	h := newHop(t, b.addr, hopConfig{})
	cc := dial(t, h.addr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := rawStream(ctx, t, cc, "/t.T/Headers")
	s.SendMsg([]byte("x"))
	s.CloseSend()
	if _, err := s.Header(); err != nil {
		t.Fatalf("Header: %v", err)
	}
	cancel()
	expectBackendCanceled(t, b)
}

// TestContentSubtype checks that any content-subtype passes without parsing
// and reaches the backend unchanged, also when it repeats and alternates
// (the egress keeps the last one's call options).
func TestContentSubtype(t *testing.T) {
	got := make(chan string, 4)
	backend := serve(t, func(s *grpc.Server) {}, grpc.ForceServerCodecV2(Codec()), grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
		md, _ := metadata.FromIncomingContext(ss.Context())
		got <- first(md["content-type"])
		var m []byte
		if err := ss.RecvMsg(&m); err != nil {
			return err
		}
		return ss.SendMsg(m)
	}))
	h := newHop(t, backend, hopConfig{})
	cc := dial(t, h.addr)
	for _, sub := range []string{"", "json", "proto", "proto", "json", "", "json", "x-custom", "x-custom"} {
		t.Run("subtype="+sub, func(t *testing.T) {
			opts := []grpc.CallOption{grpc.ForceCodecV2(rawCodec{name: sub})}
			msg := []byte("{not a protobuf \xff}")
			var reply []byte
			if err := cc.Invoke(context.Background(), "/t.T/Any", msg, &reply, opts...); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(reply, msg) {
				t.Errorf("reply %q, want %q", reply, msg)
			}
			want := "application/grpc"
			if sub != "" {
				want += "+" + sub
			}
			if ct := <-got; ct != want {
				t.Errorf("backend got content-type %q, want %q", ct, want)
			}
		})
	}
}

// TestUnknownServiceOverTheWire checks the mapping of a far-side failure
// that arrives as a capnp exception: a bootstrap capability that is an
// "Unknown persistent service ID" error reaches the client as NOT_FOUND.
func TestUnknownServiceOverTheWire(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan *rpc.Conn, 1)
	go func() {
		nc, err := ln.Accept()
		ln.Close()
		if err != nil {
			done <- nil
			return
		}
		done <- rpc.NewConn(rpc.NewStreamTransport(nc), &rpc.Options{
			BootstrapClient: capnp.ErrorClient(exc.New(exc.Failed, "vat", "Unknown persistent service ID")),
		})
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	client := rpc.NewConn(rpc.NewStreamTransport(nc), nil)
	server := <-done
	defer func() {
		client.Close()
		if server != nil {
			server.Close()
		}
	}()
	svc := captp.GrpcService(client.Bootstrap(context.Background()))
	defer svc.Release()
	in, err := NewIngress(IngressConfig{Director: func(context.Context, string) (captp.GrpcService, error) { return svc.AddRef(), nil }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(in.Close) // after the server stops (cleanups run last first)
	cc := dial(t, serve(t, func(*grpc.Server) {}, in.ServerOptions()...))
	for _, halfClose := range []bool{true, false} {
		s := rawStream(context.Background(), t, cc, "/t.T/Echo")
		s.SendMsg([]byte("x"))
		if halfClose {
			s.CloseSend()
		}
		_, err := recvAll(s)
		if st := status.Convert(err); st.Code() != codes.NotFound || !strings.Contains(st.Message(), "Unknown persistent service ID") {
			t.Errorf("halfClose=%v: got %v, want NotFound with the text", halfClose, err)
		}
	}
}

// TestCallsOnDeadConnectionNoLeak calls through a capability whose capnp
// connection is gone: every call fails with UNAVAILABLE, and the response
// Sinks the ingress made for them are released (shut down), as are the
// capnp servers' goroutines.
func TestCallsOnDeadConnectionNoLeak(t *testing.T) {
	b := newBackend(t)
	h := newHop(t, b.addr, hopConfig{})
	cc := dial(t, h.addr)
	echoBidi(context.Background(), t, cc, testMessages(2)) // connect everything first
	const queue = "capnproto.org/go/capnp/v3/server.(*Server).handleCalls"
	queues := countGoroutines(queue)
	sinks := liveSinks.Load()
	h.client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i := range 20 {
		s := rawStream(ctx, t, cc, "/t.T/Echo")
		s.SendMsg([]byte("x"))
		if i%2 == 0 { // unary-shaped
			s.CloseSend()
		}
		if _, err := recvAll(s); status.Code(err) != codes.Unavailable {
			t.Errorf("call %d: client got %v, want Unavailable", i, err)
		}
	}
	poll(t, func() bool { return countGoroutines(queue) <= queues }, "capnp server goroutines back to %d (now %d)", queues, countGoroutines(queue))
	poll(t, func() bool { return liveSinks.Load() <= sinks }, "live Sinks back to %d (now %d)", sinks, liveSinks.Load())
}

// TestEgressContextCutsCalls checks EgressConfig.Context: ending it cancels
// the backend calls in flight, on the general and the known-unary path, and
// a call made afterwards fails without reaching the backend.
func TestEgressContextCutsCalls(t *testing.T) {
	for _, kinds := range []Kinds{nil, {"/t.T/Hang": KindUnary}} {
		t.Run(fmt.Sprint("kinds=", kinds), func(t *testing.T) {
			b := newBackend(t)
			base, cut := context.WithCancel(context.Background())
			defer cut()
			h := newHop(t, b.addr, hopConfig{
				ingress: IngressConfig{Kinds: kinds},
				egress:  EgressConfig{Context: base, Kinds: kinds},
			})
			cc := dial(t, h.addr)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			s := rawStream(ctx, t, cc, "/t.T/Hang")
			s.SendMsg([]byte("x"))
			s.CloseSend()
			waitStarted(t, b)
			cut()
			expectBackendCanceled(t, b)
			if _, err := recvAll(s); status.Code(err) != codes.Canceled {
				t.Errorf("client got %v, want Canceled", err)
			}
			after := rawStream(ctx, t, cc, "/t.T/Hang")
			after.SendMsg([]byte("x"))
			after.CloseSend()
			if _, err := recvAll(after); status.Code(err) != codes.Canceled {
				t.Errorf("call after the cut got %v, want Canceled", err)
			}
			if got := h.eg.knownUnaryCalls.Load(); (kinds != nil) != (got > 0) {
				t.Errorf("known-unary calls = %d with kinds %v", got, kinds)
			}
		})
	}
}

// checkBackendDeadline waits for the backend call to start, checks that its
// deadline is within timeout, and waits for its context to end. The
// caller's side times out first and cancels (as a direct grpc-go client
// does), so the backend sees either.
func checkBackendDeadline(t *testing.T, b *backend, timeout time.Duration) {
	t.Helper()
	bctx := waitStarted(t, b)
	d, ok := bctx.Deadline()
	if !ok {
		t.Fatal("backend call has no deadline")
	}
	if left := time.Until(d); left > timeout || left <= 0 {
		t.Errorf("backend deadline is %v away, want within %v", left, timeout)
	}
	if err := waitEnded(t, b); !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		t.Errorf("backend saw %v, want its context to end", err)
	}
}
