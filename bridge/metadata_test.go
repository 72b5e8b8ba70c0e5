package bridge

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// bigMetadataCall makes a /t.T/BigMetadata call with md. closeFirst sends
// the request and half-closes before reading (the unary path); otherwise the
// request stays open while the response is read (a stream).
func bigMetadataCall(ctx context.Context, t *testing.T, cc *grpc.ClientConn, md metadata.MD, closeFirst bool) error {
	ctx = metadata.NewOutgoingContext(ctx, md)
	s, err := cc.NewStream(ctx, &streamDesc, "/t.T/BigMetadata", grpc.ForceCodecV2(Codec()))
	if err != nil {
		return err
	}
	if err := s.SendMsg([]byte("ping")); err != nil {
		_, err = recvAll(s)
		return err
	}
	if closeFirst {
		s.CloseSend()
	}
	var got []byte
	if err := s.RecvMsg(&got); err != nil {
		return err
	}
	s.CloseSend()
	_, err = recvAll(s)
	return err
}

// TestMetadataOverLimit checks that metadata over MaxMetadataSize fails its
// call alone with RESOURCE_EXHAUSTED, at each place it is checked, and that
// metadata under the limit passes.
func TestMetadataOverLimit(t *testing.T) {
	b := newBackend(t)
	const small, large = 16 << 10, 1 << 20
	big := strings.Repeat("x", 64<<10)
	cases := []struct {
		name string
		cfg  hopConfig
		md   metadata.MD
	}{
		{"request from the app (ingress)",
			hopConfig{ingress: IngressConfig{MaxMetadataSize: small}, egress: EgressConfig{MaxMetadataSize: large}},
			metadata.Pairs("x-big", big)},
		{"request over CapTP (egress)",
			hopConfig{ingress: IngressConfig{MaxMetadataSize: large}, egress: EgressConfig{MaxMetadataSize: small}},
			metadata.Pairs("x-big", big)},
		{"headers from the backend (egress)",
			hopConfig{ingress: IngressConfig{MaxMetadataSize: large}, egress: EgressConfig{MaxMetadataSize: small}},
			metadata.Pairs("x-header-bytes", itoa(64<<10))},
		{"trailers from the backend (egress)",
			hopConfig{ingress: IngressConfig{MaxMetadataSize: large}, egress: EgressConfig{MaxMetadataSize: small}},
			metadata.Pairs("x-trailer-bytes", itoa(64<<10))},
		{"headers over CapTP (ingress)",
			hopConfig{ingress: IngressConfig{MaxMetadataSize: small}, egress: EgressConfig{MaxMetadataSize: large}},
			metadata.Pairs("x-header-bytes", itoa(64<<10))},
		{"trailers over CapTP (ingress)",
			hopConfig{ingress: IngressConfig{MaxMetadataSize: small}, egress: EgressConfig{MaxMetadataSize: large}},
			metadata.Pairs("x-trailer-bytes", itoa(64<<10))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHop(t, b.addr, tc.cfg)
			cc := dial(t, h.addr)
			for _, closeFirst := range []bool{true, false} {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				err := bigMetadataCall(ctx, t, cc, tc.md, closeFirst)
				cancel()
				if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "metadata") {
					t.Errorf("closeFirst=%v: err = %v, want RESOURCE_EXHAUSTED naming the metadata", closeFirst, err)
				}
				// The connection goes on: a call with small metadata passes.
				ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
				err = bigMetadataCall(ctx, t, cc, metadata.Pairs("x-header-bytes", "100", "x-trailer-bytes", "100", "x-small", "y"), closeFirst)
				cancel()
				if err != nil {
					t.Errorf("closeFirst=%v: a call with small metadata after it: %v", closeFirst, err)
				}
			}
		})
	}
}

// TestMetadataOverLimitKnownUnary checks the egress's known-unary path
// (Kinds), which reads the backend's response on its own.
func TestMetadataOverLimitKnownUnary(t *testing.T) {
	b := newBackend(t)
	kinds := Kinds{"/t.T/BigMetadata": KindUnary}
	h := newHop(t, b.addr, hopConfig{
		ingress: IngressConfig{MaxMetadataSize: 1 << 20, Kinds: kinds},
		egress:  EgressConfig{MaxMetadataSize: 16 << 10, Kinds: kinds},
	})
	cc := dial(t, h.addr)
	for _, md := range []metadata.MD{
		metadata.Pairs("x-header-bytes", itoa(64<<10)),
		metadata.Pairs("x-trailer-bytes", itoa(64<<10)),
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := bigMetadataCall(ctx, t, cc, md, true)
		cancel()
		if status.Code(err) != codes.ResourceExhausted {
			t.Errorf("%v: err = %v, want RESOURCE_EXHAUSTED", md, err)
		}
	}
	if h.eg.knownUnaryCalls.Load() == 0 {
		t.Error("no call took the known-unary path")
	}
}

// TestHugeMetadataDoesNotHoldUpOthers sends a call with 15 MB of metadata
// (2 MB under -race, where grpc-go's HPACK runs some 40 times slower) while
// other calls run on the same bridge (one CapTP connection): it fails with
// RESOURCE_EXHAUSTED and the others keep passing.
func TestHugeMetadataDoesNotHoldUpOthers(t *testing.T) {
	huge := 15 << 20
	if raceDetector {
		huge = 2 << 20
	}
	b := newBackend(t)
	h := newHop(t, b.addr, hopConfig{}) // the default limit, 64 KiB
	cc := dial(t, h.addr)
	other := dial(t, h.addr) // the app's other connection
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var passed, failed atomic.Int64
	var slowest atomic.Int64
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				start := time.Now()
				if err := bigMetadataCall(ctx, t, other, metadata.Pairs("x-small", "y"), true); err != nil {
					failed.Add(1)
					t.Errorf("a normal call failed meanwhile: %v", err)
					return
				}
				passed.Add(1)
				if d := int64(time.Since(start)); d > slowest.Load() {
					slowest.Store(d)
				}
			}
		})
	}
	poll(t, func() bool { return passed.Load() > 10 }, "normal calls to pass")
	before := passed.Load()
	start := time.Now()
	err := bigMetadataCall(ctx, t, cc, metadata.Pairs("x-big", strings.Repeat("x", huge)), true)
	took := time.Since(start)
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("%d bytes of metadata: err = %v, want RESOURCE_EXHAUSTED", huge, err)
	}
	poll(t, func() bool { return passed.Load() > before+10 }, "normal calls to go on")
	close(stop)
	wg.Wait()
	t.Logf("%d bytes of metadata: the call failed in %v; %d normal calls passed, slowest %v", huge, took, passed.Load(), time.Duration(slowest.Load()))
}
