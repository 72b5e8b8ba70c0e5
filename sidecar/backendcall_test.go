package sidecar

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

// TestBackendCallOptions checks that an export client's interceptor hands
// grpc-go every option the call came with, however many (a backendCall
// holds a few itself), before its own finish option: the caller's last
// option takes effect, the caller's own OnFinish runs, and the call is
// counted once in the metrics and out of the drain's count.
func TestBackendCallOptions(t *testing.T) {
	backend := startTestBackend(t)
	s := &Sidecar{metrics: NewMetrics()}
	cc, err := grpc.NewClient(backend, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStreamInterceptor(s.backendStream(revocable{cut: context.Background()})))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := testgrpc.NewTestServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req := &testgrpc.StreamingOutputCallRequest{ResponseParameters: []*testgrpc.ResponseParameters{{Size: 1024}}}
	const method = "/grpc.testing.TestService/StreamingOutputCall"
	for _, extra := range []int{0, 2, backendCallOpts, 3 * backendCallOpts} {
		t.Run(fmt.Sprint(extra, " options"), func(t *testing.T) {
			var finished atomic.Int32
			opts := []grpc.CallOption{grpc.OnFinish(func(error) { finished.Add(1) })}
			for range extra {
				opts = append(opts, grpc.MaxCallSendMsgSize(1<<20))
			}
			want := codes.OK
			if extra > 0 {
				// Last: a limit the response is over.
				opts = append(opts, grpc.MaxCallRecvMsgSize(100))
				want = codes.ResourceExhausted
			}
			before, _ := callSeries(t, s.metrics, SideEgress, method, want.String())
			stream, err := client.StreamingOutputCall(ctx, req, opts...)
			if err != nil {
				t.Fatal(err)
			}
			_, err = stream.Recv()
			if got := status.Code(err); got != want {
				t.Fatalf("Recv: %v, want %v", err, want)
			}
			if want == codes.OK {
				if _, err := stream.Recv(); err == nil {
					t.Fatal("a second response")
				}
			}
			deadline := time.Now().Add(10 * time.Second)
			for { // poll: grpc-go may report the end on a goroutine of its own
				calls, _ := callSeries(t, s.metrics, SideEgress, method, want.String())
				if calls == before+1 && s.egressInflight.Load() == 0 && inFlight(t, s.metrics, SideEgress) == 0 && finished.Load() == 1 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("calls %v (was %v), in flight %d (gauge %v), caller's OnFinish ran %d times; want one more, 0, 0, once",
						calls, before, s.egressInflight.Load(), inFlight(t, s.metrics, SideEgress), finished.Load())
				}
				time.Sleep(5 * time.Millisecond) // polling interval
			}
		})
	}
}
