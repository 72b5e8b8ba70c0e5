package sidecar

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

// TestRevokeCutsOffCallsInFlight revokes an export while two streams run
// on it: both end with NOT_FOUND naming the
// revocation. Removed and added again, the export serves its URI anew.
func TestRevokeCutsOffCallsInFlight(t *testing.T) {
	p := startTestPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var streams []testgrpc.TestService_FullDuplexCallClient
	for range 2 {
		s, err := p.client.FullDuplexCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// A response proves the stream reached the backend.
		if err := s.Send(&testgrpc.StreamingOutputCallRequest{ResponseParameters: []*testgrpc.ResponseParameters{{Size: 1}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			t.Fatal(err)
		}
		streams = append(streams, s)
	}

	if _, err := p.exporter.Revoke("test"); err != nil {
		t.Fatal(err)
	}
	for i, s := range streams {
		_, err := s.Recv()
		if st := status.Convert(err); st.Code() != codes.NotFound || !strings.Contains(st.Message(), "capability revoked") {
			t.Errorf("stream %d across the revocation: %v, want NotFound naming the revocation", i, err)
		}
	}

	if err := p.exporter.RemoveExport("test"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.exporter.AddExport(ctx, p.exporter.cfg.Exports[0]); err != nil {
		t.Fatal(err)
	}
	// The import may still be in its backoff after a failed restore.
	for {
		_, err := p.client.EmptyCall(ctx, &testgrpc.Empty{})
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("call after the export was added again: %v", err)
		}
		time.Sleep(10 * time.Millisecond) // polling interval
	}
}

// TestRevokedImportState: an import whose ref was revoked at the exporter
// reports not_found (or revoked) in the admin list, not unavailable: its
// calls fail with NOT_FOUND and retrying will not help.
func TestRevokedImportState(t *testing.T) {
	p := startTestPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := p.client.EmptyCall(ctx, &testgrpc.Empty{}); err != nil {
		t.Fatal(err)
	}
	if got := p.importer.ListImports()[0].State; got != stateConnected {
		t.Fatalf("state before the revocation %q, want connected", got)
	}
	if _, err := p.exporter.Revoke("test"); err != nil {
		t.Fatal(err)
	}
	for {
		_, err := p.client.EmptyCall(ctx, &testgrpc.Empty{})
		if status.Code(err) != codes.NotFound {
			t.Fatalf("call after the revocation: %v, want NotFound", err)
		}
		if st := p.importer.ListImports()[0].State; st == stateNotFound || st == stateRevoked {
			break
		} else if st == stateUnavailable {
			t.Fatalf("state after a NOT_FOUND call %q, want not_found or revoked", st)
		}
		if ctx.Err() != nil {
			t.Fatal("the import's state never became not_found")
		}
		time.Sleep(10 * time.Millisecond) // polling interval
	}
}
