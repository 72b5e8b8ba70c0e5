package sidecar

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/vatcar/vatcar/vat"
)

// refusedConnections returns vatcar_vat_refused_connections_total{reason}.
func refusedConnections(t *testing.T, m *Metrics, reason string) float64 {
	t.Helper()
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "vatcar_vat_refused_connections_total" {
			continue
		}
		for _, metric := range f.GetMetric() {
			for _, l := range metric.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return metric.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestMaxConnectionsRefusesOneMore checks that an exporter with
// MaxConnections 1 keeps serving its one peer and refuses a second one,
// counting the refusal.
func TestMaxConnectionsRefusesOneMore(t *testing.T) {
	backend := startTestBackend(t)
	dir := t.TempDir()
	exporter := startTestSidecar(t, Config{
		Listen: "tcp:127.0.0.1:0", CapDir: dir, MaxConnections: 1,
		Exports: []Export{{Name: "test", Target: backend}},
	})
	uri := "@" + filepath.Join(dir, "test.cap")
	call := func(s *Sidecar) error {
		cc, err := grpc.NewClient(s.Addresses().Imports["test"], grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = testgrpc.NewTestServiceClient(cc).EmptyCall(ctx, &testgrpc.Empty{})
		return err
	}
	// Each importer has its own ephemeral key, so each is a peer of its own
	// with a connection of its own.
	first := startTestSidecar(t, Config{Imports: []Import{{Name: "test", URI: uri}}})
	second := startTestSidecar(t, Config{Imports: []Import{{Name: "test", URI: uri}}})

	if err := call(first); err != nil {
		t.Fatalf("first importer's call: %v", err)
	}
	if got := refusedConnections(t, exporter.Metrics(), vat.RefusedMaxConnections); got != 0 {
		t.Fatalf("refused connections after the first peer = %v, want 0", got)
	}
	if err := call(second); status.Code(err) != codes.Unavailable {
		t.Fatalf("second importer's call: %v, want UNAVAILABLE (connection refused)", err)
	}
	// The exporter counts the refusal as it closes the connection, which
	// the dialler may see first.
	deadline := time.Now().Add(10 * time.Second)
	for refusedConnections(t, exporter.Metrics(), vat.RefusedMaxConnections) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the exporter did not count the refused connection")
		}
		time.Sleep(10 * time.Millisecond) // polling interval
	}
	if err := call(first); err != nil {
		t.Errorf("first importer's call after the refusal: %v", err)
	}
}
