package bridge

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
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
	backend := serve(t, func(s *grpc.Server) { testgrpc.RegisterTestServiceServer(s, interop.NewTestServer()) })
	one := newHop(t, backend, hopConfig{})
	two := newHop(t, one.addr, hopConfig{})
	t.Run("one bridge", func(t *testing.T) { runInteropSuite(t, one.addr, nil, one) })
	t.Run("two bridges", func(t *testing.T) { runInteropSuite(t, two.addr, nil, one, two) })
}

// TestInteropKnownKinds runs the interop suite through bridges that know
// the test services' kinds (read from their real descriptor): every unary
// call takes the fast path on both sides, every other call the general
// path.
func TestInteropKnownKinds(t *testing.T) {
	kinds := interopKinds(t)
	cfg := hopConfig{ingress: IngressConfig{Kinds: kinds}, egress: EgressConfig{Kinds: kinds}}
	backend := serve(t, func(s *grpc.Server) { testgrpc.RegisterTestServiceServer(s, interop.NewTestServer()) })
	one := newHop(t, backend, cfg)
	two := newHop(t, one.addr, cfg)
	t.Run("one bridge", func(t *testing.T) { runInteropSuite(t, one.addr, kinds, one) })
	t.Run("two bridges", func(t *testing.T) { runInteropSuite(t, two.addr, kinds, one, two) })
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
func runInteropSuite(t *testing.T, addr string, kinds Kinds, hops ...*hop) {
	cc := dial(t, addr)
	tc := testgrpc.NewTestServiceClient(cc)
	cases := []struct {
		name  string
		calls int
		run   func(ctx context.Context)
	}{
		{"empty_unary", unaryCalls, func(ctx context.Context) { interop.DoEmptyUnaryCall(ctx, tc) }},
		{"large_unary", unaryCalls, func(ctx context.Context) { interop.DoLargeUnaryCall(ctx, tc) }},
		{"client_streaming", streamCalls, func(ctx context.Context) { interop.DoClientStreaming(ctx, tc) }},
		{"server_streaming", streamCalls, func(ctx context.Context) { interop.DoServerStreaming(ctx, tc) }},
		{"ping_pong", streamCalls, func(ctx context.Context) { interop.DoPingPong(ctx, tc) }},
		{"empty_stream", streamCalls, func(ctx context.Context) { interop.DoEmptyStream(ctx, tc) }},
		{"timeout_on_sleeping_server", streamCalls, func(ctx context.Context) { interop.DoTimeoutOnSleepingServer(ctx, tc) }},
		{"cancel_after_begin", streamCalls, func(ctx context.Context) { interop.DoCancelAfterBegin(ctx, tc) }},
		{"cancel_after_first_response", streamCalls, func(ctx context.Context) { interop.DoCancelAfterFirstResponse(ctx, tc) }},
		{"status_code_and_message", bothCalls, func(ctx context.Context) { interop.DoStatusCodeAndMessage(ctx, tc) }},
		{"special_status_message", unaryCalls, func(ctx context.Context) { interop.DoSpecialStatusMessage(ctx, tc) }},
		{"custom_metadata", bothCalls, func(ctx context.Context) { interop.DoCustomMetadata(ctx, tc) }},
		{"unimplemented_method", unaryCalls, func(ctx context.Context) { interop.DoUnimplementedMethod(ctx, cc) }},
		{"unimplemented_service", unaryCalls, func(ctx context.Context) {
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
			runInterop(t, func() { c.run(ctx) })
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
