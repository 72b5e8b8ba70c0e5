package sidecar

import (
	"bytes"
	"context"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
)

// TestLargeUnaryCallsInFlight makes echo calls of 4 MiB each way, four at
// a time, through an exporting and an importing sidecar. On vatcar's
// engine they stalled after a few dozen calls: a Sink.close
// pipelined on a question whose Return was being handled waited for the
// results while holding the read lock the receive loop needed first.
func TestLargeUnaryCallsInFlight(t *testing.T) {
	if raceDetector {
		t.Skip("4 MiB copies take minutes under -race; CI runs this package without it too")
	}
	backend := startTestBackend(t)
	dir := t.TempDir()
	startTestSidecar(t, Config{
		Listen: "tcp:127.0.0.1:0", SecretKeyFile: filepath.Join(dir, "k.pem"), CapDir: dir,
		Exports: []Export{{Name: "test", Target: backend}}, MaxMessageSize: 64 << 20,
	})
	imp := startTestSidecar(t, Config{
		Imports:        []Import{{Name: "test", URI: "@" + filepath.Join(dir, "test.cap")}},
		MaxMessageSize: 64 << 20,
	})
	cc, err := grpc.NewClient(imp.Addresses().Imports["test"], grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := testgrpc.NewTestServiceClient(cc)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const (
		workers = 4
		calls   = 32 // per worker; the stall came after 13-74 calls in all
		size    = 4<<20 - 64
	)
	var (
		wg   sync.WaitGroup
		done atomic.Int64
	)
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := bytes.Repeat([]byte{byte(w)}, size)
			for range calls {
				resp, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseSize: size, Payload: &testgrpc.Payload{Body: body}})
				if err != nil {
					errs <- err
					return
				}
				if n := len(resp.GetPayload().GetBody()); n != size {
					t.Errorf("reply of %d bytes, want %d", n, size)
				}
				done.Add(1)
			}
		}()
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	// A stall is no call finishing for a minute (each takes
	// milliseconds), not a total time.
	last := int64(-1)
	for over := false; !over; {
		select {
		case <-finished:
			over = true
			last = -2
		case <-time.After(time.Minute):
			if n := done.Load(); n == last {
				var dump strings.Builder
				pprof.Lookup("goroutine").WriteTo(&dump, 2)
				t.Errorf("calls stalled after %d of %d; goroutines:\n%s", n, workers*calls, dump.String())
				cancel()
				<-finished
				over = true
			} else {
				last = n
			}
		}
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := done.Load(); n != workers*calls && !t.Failed() {
		t.Errorf("%d calls finished, want %d", n, workers*calls)
	}
}
