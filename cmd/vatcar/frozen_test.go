package main_test

import (
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

// TestFrozenExporterFailsCallsInFlight is issue 14's seventh row against
// the built binary: the exporter is frozen (SIGSTOP) while a stream is in
// flight; the importer's heartbeat (here 500 ms + 500 ms) finds it and the
// stream fails with UNAVAILABLE, long before its own deadline (60 s).
func TestFrozenExporterFailsCallsInFlight(t *testing.T) {
	p := startPairArgs(t, []string{"--heartbeat-interval", "500ms", "--heartbeat-timeout", "500ms"})
	ctx := ctxTimeout(t, 60*time.Second)
	st, err := p.client.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 1}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	p.exporter.signal(syscall.SIGSTOP)
	defer p.exporter.signal(syscall.SIGCONT)
	start := time.Now()
	_, err = st.Recv()
	took := time.Since(start)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("stream in flight on a frozen exporter: %v, want UNAVAILABLE", err)
	}
	if took > 30*time.Second {
		t.Errorf("the stream failed after %v: that is its deadline, not the heartbeat", took)
	}
	t.Logf("stream in flight failed with UNAVAILABLE %v after the exporter froze", took.Round(time.Millisecond))
	waitFor(t, 10*time.Second, "the importer to count the connection closed by the heartbeat", func() bool {
		return scrape(t, p.imp.Health, "vatcar_vat_refused_connections_total", map[string]string{"reason": "heartbeat"}) == 1
	})
}
