package bridge

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

// runInterop runs one interop case, turning its Fatal into a test failure.
func runInterop(t *testing.T, f func()) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			if fp, ok := r.(fatalPanic); ok {
				t.Fatalf("interop: %s", fp.msg)
			}
			panic(r)
		}
	}()
	f()
}

// TestInterop runs grpc-go's interop suite through ingress -> CapTP -> egress
// against grpc-go's interop test server, through one bridge and through
// two in a row. Without Kinds no call takes the known-unary fast path.
func TestInterop(t *testing.T) {
	backend, running := interopBackend(t)
	one := newHop(t, backend, hopConfig{})
	two := newHop(t, one.addr, hopConfig{})
	t.Run("one bridge", func(t *testing.T) { runInteropSuite(t, one.addr, running, nil, one) })
	t.Run("two bridges", func(t *testing.T) { runInteropSuite(t, two.addr, running, nil, one, two) })
}

// TestInteropKnownKinds runs the interop suite through bridges that know
// the test services' kinds (read from their real descriptor): every unary
// call takes the fast path on both sides, every other call the general
// path.
func TestInteropKnownKinds(t *testing.T) {
	kinds := interopKinds(t)
	cfg := hopConfig{ingress: IngressConfig{Kinds: kinds}, egress: EgressConfig{Kinds: kinds}}
	backend, running := interopBackend(t)
	one := newHop(t, backend, cfg)
	two := newHop(t, one.addr, cfg)
	t.Run("one bridge", func(t *testing.T) { runInteropSuite(t, one.addr, running, kinds, one) })
	t.Run("two bridges", func(t *testing.T) { runInteropSuite(t, two.addr, running, kinds, one, two) })
}

// interopBackend serves grpc-go's interop test server and counts its
// streaming handlers running.
func interopBackend(t *testing.T) (addr string, running *atomic.Int64) {
	running = new(atomic.Int64)
	count := func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		running.Add(1)
		defer running.Add(-1)
		return h(srv, ss)
	}
	addr = serve(t, func(s *grpc.Server) { testgrpc.RegisterTestServiceServer(s, interop.NewTestServer()) }, grpc.StreamInterceptor(count))
	return addr, running
}

// doCancelAfterBegin is interop.DoCancelAfterBegin without its half-close:
// that one cancels, then calls CloseAndRecv, which still sends END_STREAM
// when grpc-go's cancel watcher has not run yet; the backend then answers
// OK, and a RecvMsg that finds that answer already queued returns it
// (grpc-go picks between a done context and a ready message at random).
// Through bridges under load that happened (1 CI run in 4). Here nothing is
// sent after the cancel, so the one right answer is Canceled; and the call
// must not be left running at the backend (whether it got there at all is
// a race between the call and its cancel).
func doCancelAfterBegin(ctx context.Context, t *testing.T, tc testgrpc.TestServiceClient, running *atomic.Int64) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := tc.StreamingInputCall(ctx)
	if err != nil {
		t.Fatalf("StreamingInputCall: %v", err)
	}
	cancel()
	if err := stream.RecvMsg(new(testgrpc.StreamingInputCallResponse)); status.Code(err) != codes.Canceled {
		t.Fatalf("RecvMsg after cancel: %v, want code Canceled", err)
	}
	poll(t, func() bool { return running.Load() == 0 }, "the backend's streaming handlers to end (%d running)", running.Load())
}

// Which calls an interop case makes.
const (
	unaryCalls  = iota // unary calls only
	streamCalls        // streaming calls only
	bothCalls          // some of each
)

// pathCounts are a hop's counters of the paths calls took.
type pathCounts struct{ unary, stream, knownIn, knownEg int64 }

func countPaths(h *hop) pathCounts {
	return pathCounts{h.in.unaryCalls.Load(), h.in.streamCalls.Load(), h.in.knownUnaryCalls.Load(), h.eg.knownUnaryCalls.Load()}
}

// runInteropSuite runs the interop cases against the server at addr, and
// checks after each that the hops' calls took the paths kinds predict
// (with nil kinds: never the fast path).
func runInteropSuite(t *testing.T, addr string, running *atomic.Int64, kinds Kinds, hops ...*hop) {
	cc := dial(t, addr)
	tc := testgrpc.NewTestServiceClient(cc)
	cases := []struct {
		name  string
		calls int
		run   func(ctx context.Context, t *testing.T)
	}{
		{"empty_unary", unaryCalls, func(ctx context.Context, _ *testing.T) { interop.DoEmptyUnaryCall(ctx, tc) }},
		{"large_unary", unaryCalls, func(ctx context.Context, _ *testing.T) { interop.DoLargeUnaryCall(ctx, tc) }},
		{"client_streaming", streamCalls, func(ctx context.Context, _ *testing.T) { interop.DoClientStreaming(ctx, tc) }},
		{"server_streaming", streamCalls, func(ctx context.Context, _ *testing.T) { interop.DoServerStreaming(ctx, tc) }},
		{"ping_pong", streamCalls, func(ctx context.Context, _ *testing.T) { interop.DoPingPong(ctx, tc) }},
		{"empty_stream", streamCalls, func(ctx context.Context, _ *testing.T) { interop.DoEmptyStream(ctx, tc) }},
		{"timeout_on_sleeping_server", streamCalls, func(ctx context.Context, _ *testing.T) { interop.DoTimeoutOnSleepingServer(ctx, tc) }},
		{"cancel_after_begin", streamCalls, func(ctx context.Context, t *testing.T) { doCancelAfterBegin(ctx, t, tc, running) }},
		{"cancel_after_first_response", streamCalls, func(ctx context.Context, _ *testing.T) { interop.DoCancelAfterFirstResponse(ctx, tc) }},
		{"status_code_and_message", bothCalls, func(ctx context.Context, _ *testing.T) { interop.DoStatusCodeAndMessage(ctx, tc) }},
		{"special_status_message", unaryCalls, func(ctx context.Context, _ *testing.T) { interop.DoSpecialStatusMessage(ctx, tc) }},
		{"custom_metadata", bothCalls, func(ctx context.Context, _ *testing.T) { interop.DoCustomMetadata(ctx, tc) }},
		{"unimplemented_method", unaryCalls, func(ctx context.Context, _ *testing.T) { interop.DoUnimplementedMethod(ctx, cc) }},
		{"unimplemented_service", unaryCalls, func(ctx context.Context, _ *testing.T) {
			interop.DoUnimplementedService(ctx, testgrpc.NewUnimplementedServiceClient(cc))
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			before := make([]pathCounts, len(hops))
			for i, h := range hops {
				before[i] = countPaths(h)
			}
			runInterop(t, func() { c.run(ctx, t) })
			for i, h := range hops {
				checkPaths(t, i, c.calls, kinds != nil, before[i], countPaths(h))
			}
		})
	}
}

// checkPaths checks the paths that hop number i's calls took.
func checkPaths(t *testing.T, i, calls int, known bool, before, after pathCounts) {
	t.Helper()
	knownIn, knownEg := after.knownIn-before.knownIn, after.knownEg-before.knownEg
	// Calls on the general path: by stream, or unary-shaped.
	general := after.unary - before.unary - knownIn + after.stream - before.stream
	switch {
	case !known:
		if knownIn != 0 || knownEg != 0 {
			t.Errorf("hop %d without kinds: %d ingress and %d egress calls took the fast path", i, knownIn, knownEg)
		}
	case calls == unaryCalls:
		if knownIn < 1 || general != 0 || knownEg != knownIn {
			t.Errorf("hop %d: %d known unary calls (%d at the egress) and %d on the general path, want only known unary calls", i, knownIn, knownEg, general)
		}
	case calls == streamCalls:
		if knownIn != 0 || knownEg != 0 {
			t.Errorf("hop %d: %d ingress and %d egress calls of streaming methods took the fast path", i, knownIn, knownEg)
		}
	case calls == bothCalls:
		if knownIn < 1 || knownEg != knownIn || general < 1 {
			t.Errorf("hop %d: %d known unary calls (%d at the egress) and %d on the general path, want both", i, knownIn, knownEg, general)
		}
	}
}
