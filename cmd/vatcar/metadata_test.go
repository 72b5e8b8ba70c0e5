package main_test

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// TestHugeMetadataFailsAlone is issue 14's sixth row against the built
// binaries: an app sends calls with 15 MB of metadata through an import
// while another app keeps calling. Each huge call fails at the importer
// with RESOURCE_EXHAUSTED (--max-metadata-size, 64 KiB by default) and
// never reaches the exporter; the other app's calls all pass. (Before: the
// call succeeded, and every other call on the CapTP connection stalled
// 1.7 s while its 15 MB crossed.)
func TestHugeMetadataFailsAlone(t *testing.T) {
	p := startPair(t)
	ctx := ctxTimeout(t, 60*time.Second)
	other := testpb.NewTestServiceClient(dial(t, p.imp.Imports["test"]))
	if _, err := other.EmptyCall(ctx, &testpb.Empty{}); err != nil {
		t.Fatal(err)
	}
	const huge = 3
	legit := keepCalling(ctx, other)
	big := strings.Repeat("x", 15<<20)
	for i := range huge {
		start := time.Now()
		_, err := p.client.EmptyCall(metadata.AppendToOutgoingContext(ctx, "x-big", big), &testpb.Empty{})
		if s := status.Convert(err); s.Code() != codes.ResourceExhausted || !strings.Contains(s.Message(), "metadata") {
			t.Fatalf("call %d with 15 MB of metadata: %v, want RESOURCE_EXHAUSTED naming the metadata", i, err)
		}
		t.Logf("call %d with 15 MB of metadata refused in %v", i, time.Since(start).Round(time.Millisecond))
	}
	calls := legit()
	t.Logf("the other app's calls meanwhile: %d ok, %d failed, slowest %v", calls.ok, calls.failed, calls.slowest.Round(time.Millisecond))
	if calls.ok == 0 || calls.failed > 0 {
		t.Errorf("the other app's calls: %d ok, %d failed (first error: %v)", calls.ok, calls.failed, calls.err)
	}
	// The exporter's backend saw the other app's calls only.
	const method = "/grpc.testing.TestService/EmptyCall"
	backendCalls := scrape(t, p.exp.Health, "vatcar_grpc_calls_total", map[string]string{"side": "egress", "method": method})
	if want := float64(1 + calls.ok); backendCalls != want {
		t.Errorf("the exporter made %v backend calls, want %v (the other app's): a huge call crossed", backendCalls, want)
	}
	// The importer counted the refusals.
	if got := scrape(t, p.imp.Health, "vatcar_grpc_calls_total", map[string]string{"side": "ingress", "method": method, "code": "ResourceExhausted"}); got != huge {
		t.Errorf("the importer counted %v calls refused with RESOURCE_EXHAUSTED, want %d", got, huge)
	}
	if rss := scrape(t, p.imp.Health, "process_resident_memory_bytes", nil); rss > maxAttackRSS {
		t.Errorf("importer RSS %.0f MiB after the attack, want under %d MiB", rss/(1<<20), maxAttackRSS>>20)
	}
}
