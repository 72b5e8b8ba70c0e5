package bridge

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// These tests run calls to methods the bridge knows to be unary (or is told
// so wrongly) and check what the client and the backend see, and which
// path each side took.

// knownHop bridges to backend with both sides knowing kinds.
func knownHop(t testing.TB, backend string, kinds Kinds, cfg hopConfig) *hop {
	cfg.ingress.Kinds, cfg.egress.Kinds = kinds, kinds
	return newHop(t, backend, cfg)
}

// testKinds declares the test backend's methods unary, rightly (Hang,
// First, Fail, Echo with one message, Produce with one size) or wrongly
// (Flood streams, Hash reads a stream).
var testKinds = Kinds{
	"/t.T/Hang": KindUnary, "/t.T/First": KindUnary, "/t.T/Fail": KindUnary, "/t.T/Echo": KindUnary,
	"/t.T/Produce": KindUnary, "/t.T/Flood": KindUnary, "/t.T/Hash": KindUnary, "/t.T/Any": KindUnary,
}

// invoke makes a unary call with the raw codec.
func invoke(ctx context.Context, cc *grpc.ClientConn, method string, req []byte, opts ...grpc.CallOption) ([]byte, error) {
	var reply []byte
	opts = append([]grpc.CallOption{grpc.ForceCodecV2(Codec()), grpc.MaxCallRecvMsgSize(MaxMessageSizeLimit), grpc.MaxCallSendMsgSize(MaxMessageSizeLimit)}, opts...)
	err := cc.Invoke(ctx, method, req, &reply, opts...)
	return reply, err
}

// waitIdle waits until the hop's egress runs no call: every admission slot
// came back.
func waitIdle(t testing.TB, h *hop) {
	t.Helper()
	poll(t, func() bool { return h.eg.active.Load() == 0 }, "egress calls to end (%d running)", h.eg.active.Load())
}

// TestKnownUnaryMetadataAndStatus checks that request metadata, response
// headers and trailers, messages and statuses with details cross the fast
// path intact, and that both sides took it.
func TestKnownUnaryMetadataAndStatus(t *testing.T) {
	st, err := status.New(codes.Aborted, "with details ✓").WithDetails(&errdetails.ErrorInfo{Reason: "R", Domain: "d"})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan metadata.MD, 2)
	backend := serve(t, func(*grpc.Server) {}, grpc.ForceServerCodecV2(Codec()), grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
		md, _ := metadata.FromIncomingContext(ss.Context())
		got <- md
		var m []byte
		if err := ss.RecvMsg(&m); err != nil {
			return err
		}
		if err := ss.SendHeader(metadata.Pairs("x-hdr", "h", "x-hdr-bin", "\x00\xff")); err != nil {
			return err
		}
		ss.SetTrailer(metadata.Pairs("x-trl", "t"))
		if string(m) == "fail" {
			return st.Err()
		}
		return ss.SendMsg(append([]byte("echo:"), m...))
	}))
	h := knownHop(t, backend, testKinds, hopConfig{})
	cc := dial(t, h.addr)
	want := metadata.MD{
		"traceparent":    {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
		"grpc-trace-bin": {string([]byte{0, 1, 2, 0xff, 0x80})},
		"x-multi":        {"a", "b"},
	}
	for _, fail := range []bool{false, true} {
		t.Run(fmt.Sprint("fail=", fail), func(t *testing.T) {
			before := countPaths(h)
			req := "hello"
			if fail {
				req = "fail"
			}
			var hdr, trl metadata.MD
			ctx := metadata.NewOutgoingContext(context.Background(), want)
			reply, err := invoke(ctx, cc, "/t.T/Any", []byte(req), grpc.Header(&hdr), grpc.Trailer(&trl))
			md := <-got
			for k, v := range want {
				if fmt.Sprint(md[k]) != fmt.Sprint(v) {
					t.Errorf("backend got %s=%q, want %q", k, md[k], v)
				}
			}
			if fail {
				got := status.Convert(err)
				if got.Code() != codes.Aborted || got.Message() != st.Message() || len(got.Details()) != 1 {
					t.Errorf("got %v %q %v, want %v", got.Code(), got.Message(), got.Details(), st)
				} else if info, ok := got.Details()[0].(*errdetails.ErrorInfo); !ok || info.Reason != "R" {
					t.Errorf("details = %v", got.Details())
				}
			} else if err != nil || string(reply) != "echo:hello" {
				t.Errorf("got %q, %v; want echo:hello", reply, err)
			}
			if first(hdr["x-hdr"]) != "h" || first(hdr["x-hdr-bin"]) != "\x00\xff" || first(trl["x-trl"]) != "t" {
				t.Errorf("headers %v, trailers %v", hdr, trl)
			}
			after := countPaths(h)
			if after.knownIn-before.knownIn != 1 || after.knownEg-before.knownEg != 1 {
				t.Errorf("known unary calls: ingress %d, egress %d; want 1 each", after.knownIn-before.knownIn, after.knownEg-before.knownEg)
			}
		})
	}
	waitIdle(t, h)
}

// TestKnownUnaryDeadlineAndCancel checks that a fast-path call carries its
// deadline to the backend, and that cancelling it or losing the capnp
// connection cancels the backend call.
func TestKnownUnaryDeadlineAndCancel(t *testing.T) {
	b := newBackend(t)
	h := knownHop(t, b.addr, testKinds, hopConfig{})
	cc := dial(t, h.addr)

	t.Run("deadline", func(t *testing.T) {
		const timeout = 500 * time.Millisecond
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		done := make(chan error, 1)
		go func() { _, err := invoke(ctx, cc, "/t.T/Hang", []byte("x")); done <- err }()
		checkBackendDeadline(t, b, timeout)
		if err := <-done; status.Code(err) != codes.DeadlineExceeded {
			t.Errorf("client got %v, want DeadlineExceeded", err)
		}
	})
	t.Run("cancel", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { _, err := invoke(ctx, cc, "/t.T/Hang", []byte("x")); done <- err }()
		waitStarted(t, b)
		cancel()
		expectBackendCanceled(t, b)
		if err := <-done; status.Code(err) != codes.Canceled {
			t.Errorf("client got %v, want Canceled", err)
		}
	})
	if n := h.in.knownUnaryCalls.Load(); n != 2 {
		t.Errorf("%d calls took the ingress fast path, want 2", n)
	}
	waitIdle(t, h)

	t.Run("connection lost", func(t *testing.T) {
		done := make(chan error, 1)
		go func() { _, err := invoke(context.Background(), cc, "/t.T/Hang", []byte("x")); done <- err }()
		waitStarted(t, b)
		h.client.Close()
		if err := <-done; status.Code(err) != codes.Unavailable {
			t.Errorf("client got %v, want Unavailable", err)
		}
		expectBackendCanceled(t, b)
		waitIdle(t, h)
	})
}

// TestKnownUnaryLarge sends requests and responses around the size a unary
// call carries: larger requests take the general path from the ingress,
// larger responses stream back from the egress's fast path.
func TestKnownUnaryLarge(t *testing.T) {
	b := newBackend(t)
	h := knownHop(t, b.addr, testKinds, hopConfig{})
	cc := dial(t, h.addr)
	cases := []struct {
		name             string
		method           string
		size             int
		knownIn, knownEg int64 // calls that took the fast paths
		streamed         int64 // egress replies that streamed
	}{
		{"request at the limit", "/t.T/Echo", inlineMax, 1, 1, 0},
		{"request over the limit", "/t.T/Echo", inlineMax + 1, 0, 0, 0},
		{"request 3 MiB", "/t.T/Echo", 3 << 20, 0, 0, 0},
		{"response at the limit", "/t.T/Produce", inlineMax, 1, 1, 0},
		{"response over the limit", "/t.T/Produce", inlineMax + 1, 1, 1, 1},
		{"response 3 MiB", "/t.T/Produce", 3 << 20, 1, 1, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before, streamedBefore := countPaths(h), h.eg.streamedReplies.Load()
			req, want := pattern(c.size), pattern(c.size)
			if c.method == "/t.T/Produce" {
				req = binary.BigEndian.AppendUint64(nil, uint64(c.size))
			}
			reply, err := invoke(context.Background(), cc, c.method, req)
			if err != nil || !bytes.Equal(reply, want) {
				t.Fatalf("got %d bytes (equal: %v), %v; want %d bytes", len(reply), bytes.Equal(reply, want), err, len(want))
			}
			after := countPaths(h)
			if in, eg := after.knownIn-before.knownIn, after.knownEg-before.knownEg; in != c.knownIn || eg != c.knownEg {
				t.Errorf("fast paths taken: ingress %d, egress %d; want %d, %d", in, eg, c.knownIn, c.knownEg)
			}
			if got := h.eg.streamedReplies.Load() - streamedBefore; got != c.streamed {
				t.Errorf("%d replies streamed, want %d", got, c.streamed)
			}
		})
	}
	waitIdle(t, h)
}

// TestKnownUnaryWrongKinds calls methods wrongly declared unary: streams
// still work through the fallback, a unary client of a streaming backend
// gets grpc-go's own cardinality error, and nothing is left behind.
func TestKnownUnaryWrongKinds(t *testing.T) {
	b := newBackend(t)
	h := knownHop(t, b.addr, testKinds, hopConfig{})
	cc := dial(t, h.addr)
	flood := func(n, size int) []byte {
		return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, uint64(n)), uint64(size))
	}
	if _, err := invoke(context.Background(), cc, "/t.T/First", []byte("warm-up")); err != nil {
		t.Fatal(err)
	}
	ignore := goleak.IgnoreCurrent()
	const queue = "capnproto.org/go/capnp/v3/server.(*Server).handleCalls"

	t.Run("server stream", func(t *testing.T) {
		before := countPaths(h)
		s := rawStream(context.Background(), t, cc, "/t.T/Flood")
		s.SendMsg(flood(50, 1000))
		s.CloseSend()
		msgs, err := recvAll(s)
		if err != nil || len(msgs) != 50 {
			t.Fatalf("got %d messages, %v; want 50, OK", len(msgs), err)
		}
		if after := countPaths(h); after.knownEg-before.knownEg != 1 {
			t.Errorf("egress fast path taken %d times, want 1", after.knownEg-before.knownEg)
		}
	})
	t.Run("client stream", func(t *testing.T) {
		before := countPaths(h)
		s := rawStream(context.Background(), t, cc, "/t.T/Hash")
		for _, m := range []string{"a", "bc", "def"} {
			s.SendMsg([]byte(m))
		}
		s.CloseSend()
		msgs, err := recvAll(s)
		want := hashOf("abcdef")
		if err != nil || len(msgs) != 1 || !bytes.Equal(msgs[0], want) {
			t.Fatalf("got %x, %v; want %x", msgs, err, want)
		}
		if after := countPaths(h); after.knownIn != before.knownIn || after.stream-before.stream != 1 {
			t.Errorf("ingress: %d fast, %d streams; want the stream path", after.knownIn-before.knownIn, after.stream-before.stream)
		}
	})
	for _, n := range []int{2, 100000} {
		t.Run(fmt.Sprintf("unary client, %d responses", n), func(t *testing.T) {
			// grpc-go's unary client leaves the stream open after this
			// error (until its deadline); closing its connection ends it.
			cc := dial(t, h.addr)
			_, err := invoke(context.Background(), cc, "/t.T/Flood", flood(n, 64<<10))
			if status.Code(err) != codes.Internal || !strings.Contains(status.Convert(err).Message(), "cardinality violation") {
				t.Errorf("got %v, want Internal cardinality violation", err)
			}
			cc.Close()
		})
	}
	t.Run("bidi client waiting before its half-close", func(t *testing.T) {
		// The ingress waits for the half-close, as grpc-go's own unary
		// server does: such a client waits for its deadline, and no
		// message is lost or reordered meanwhile.
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		s := rawStream(ctx, t, cc, "/t.T/Echo")
		s.SendMsg([]byte("x"))
		var m []byte
		if err := s.RecvMsg(&m); status.Code(err) != codes.DeadlineExceeded {
			t.Errorf("got %q, %v; want DeadlineExceeded", m, err)
		}
	})
	t.Run("no request", func(t *testing.T) {
		// A client that half-closes without a message: the call takes the
		// general path, so a unary backend answers it as it would
		// directly, and a method wrongly declared unary still gets its
		// empty request stream.
		direct := serve(t, func(s *grpc.Server) { testgrpc.RegisterTestServiceServer(s, interop.NewTestServer()) })
		s := rawStream(context.Background(), t, dial(t, direct), "/grpc.testing.TestService/EmptyCall")
		s.CloseSend()
		_, want := recvAll(s)
		kinds := interopKinds(t)
		kinds["/grpc.testing.TestService/StreamingInputCall"] = KindUnary // wrongly
		ih := newHop(t, direct, hopConfig{ingress: IngressConfig{Kinds: kinds}, egress: EgressConfig{Kinds: kinds}})
		icc := dial(t, ih.addr)
		s = rawStream(context.Background(), t, icc, "/grpc.testing.TestService/EmptyCall")
		s.CloseSend()
		_, err := recvAll(s)
		if want == nil || status.Code(err) != status.Code(want) || status.Convert(err).Message() != status.Convert(want).Message() {
			t.Errorf("EmptyCall without a request: got %v, want %v as from the backend directly", err, want)
		}
		// StreamingInputCall with no messages answers an empty aggregate.
		resp, err := testgrpc.NewTestServiceClient(icc).StreamingInputCall(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if r, err := resp.CloseAndRecv(); err != nil || r.GetAggregatedPayloadSize() != 0 {
			t.Errorf("empty client stream of a method declared unary: got %v, %v; want an empty aggregate", r, err)
		}
		waitIdle(t, ih)
	})
	waitIdle(t, h)
	// Parked egress workers and their janitor stay until the egress is
	// released (a call may start a second worker after IgnoreCurrent).
	if err := goleak.Find(ignore, goleak.IgnoreTopFunction(queue), goleak.IgnoreAnyFunction(queue),
		goleak.IgnoreTopFunction(workerFunc), goleak.IgnoreTopFunction(janitorFunc)); err != nil {
		t.Error(err)
	}
}

// hashOf is what /t.T/Hash answers for messages whose concatenation is s.
func hashOf(s string) []byte {
	sum := sha256.Sum256([]byte(s))
	return binary.BigEndian.AppendUint64(sum[:], uint64(len(s)))
}

// TestKnownUnaryOverloaded checks admission control on the fast path: a
// call over the limit fails with RESOURCE_EXHAUSTED, and slots come back.
func TestKnownUnaryOverloaded(t *testing.T) {
	b := newBackend(t)
	h := knownHop(t, b.addr, testKinds, hopConfig{egress: EgressConfig{MaxConcurrentCalls: 2}})
	cc := dial(t, h.addr)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			invoke(ctx, cc, "/t.T/Hang", []byte("x"))
		}()
		waitStarted(t, b)
	}
	if _, err := invoke(context.Background(), cc, "/t.T/First", []byte("x")); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("call over the limit got %v, want ResourceExhausted", err)
	}
	cancel()
	wg.Wait()
	waitEnded(t, b)
	waitEnded(t, b)
	waitIdle(t, h)
	if got, err := invoke(context.Background(), cc, "/t.T/First", []byte("again")); err != nil || string(got) != "again" {
		t.Errorf("after the slots were freed: got %q, %v", got, err)
	}
}

// TestKnownUnaryMixed_Stress runs unary calls on the fast path at once with
// streams of methods wrongly declared unary (which fall back), through one
// bridge, many times. Each result is checked.
func TestKnownUnaryMixed_Stress(t *testing.T) {
	b := newBackend(t)
	h := knownHop(t, b.addr, testKinds, hopConfig{})
	cc := dial(t, h.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				// Kind 3 (a bidi client that waits for an answer before
				// half-closing) would wait for its deadline on a method
				// declared unary, as on grpc-go's own unary server.
				if k := g + i; k%4 != 3 {
					if err := mixedCall(ctx, cc, k); err != nil {
						errs <- fmt.Errorf("goroutine %d call %d: %w", g, i, err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if h.in.knownUnaryCalls.Load() == 0 || h.eg.knownUnaryCalls.Load() == 0 {
		t.Errorf("no call took the fast path (ingress %d, egress %d)", h.in.knownUnaryCalls.Load(), h.eg.knownUnaryCalls.Load())
	}
	waitIdle(t, h)
}
