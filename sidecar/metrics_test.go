package sidecar

import (
	"context"
	"maps"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/vatcar/vatcar/internal/buildinfo"
	"github.com/vatcar/vatcar/vat"
)

// peerGauges returns the vatcar_vat_connections series by peer.
func peerGauges(t *testing.T, m *Metrics) map[string]float64 {
	t.Helper()
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		if f.GetName() != "vatcar_vat_connections" {
			continue
		}
		for _, metric := range f.GetMetric() {
			out[metric.GetLabel()[0].GetValue()] = metric.GetGauge().GetValue()
		}
	}
	return out
}

// TestPeerConnectionSeriesGo checks that a peer's connection gauge counts
// its connections and that its series goes with the last one, so peers
// that come and go (any TLS key may connect) do not pile up series.
func TestPeerConnectionSeriesGo(t *testing.T) {
	m := NewMetrics()
	steps := []struct {
		peer       string
		up         bool
		wantSeries int
		wantA      float64
	}{
		{"a", true, 1, 1},
		{"a", true, 1, 2},
		{"b", true, 2, 2},
		{"a", false, 2, 1},
		{"b", false, 1, 1},
		{"a", false, 0, 0},
		{"a", false, 0, 0}, // a stray close changes nothing
	}
	for i, s := range steps {
		m.peerConnection(s.peer, s.up)
		got := peerGauges(t, m)
		if len(got) != s.wantSeries || got["a"] != s.wantA {
			t.Errorf("step %d: series %v, want %d with a=%v", i, got, s.wantSeries, s.wantA)
		}
	}
}

// TestBuildInfoMetric checks vatcar_build_info: one series, value 1,
// labelled with the build's version, revision and Go version.
func TestBuildInfoMetric(t *testing.T) {
	m := NewMetrics()
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := buildinfo.Read()
	for _, f := range families {
		if f.GetName() != "vatcar_build_info" {
			continue
		}
		if len(f.GetMetric()) != 1 {
			t.Fatalf("vatcar_build_info has %d series, want 1", len(f.GetMetric()))
		}
		metric := f.GetMetric()[0]
		labels := map[string]string{}
		for _, l := range metric.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		wantLabels := map[string]string{"version": want.Version, "revision": want.RevisionOrUnknown(), "goversion": want.GoVersion}
		if !maps.Equal(labels, wantLabels) || metric.GetGauge().GetValue() != 1 {
			t.Errorf("vatcar_build_info{%v} = %v, want {%v} = 1", labels, metric.GetGauge().GetValue(), wantLabels)
		}
		return
	}
	t.Fatal("no vatcar_build_info metric")
}

// counterValue returns the counter name{label=value} from m; 0 when absent.
func counterValue(t *testing.T, m *Metrics, name, label, value string) float64 {
	t.Helper()
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, metric := range f.GetMetric() {
			for _, l := range metric.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return metric.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestRestoresByResult checks vatcar_restores_total's results: ok for a
// served restore, unknown for an id the exporter does not have, empty for
// the empty ids of heartbeats.
func TestRestoresByResult(t *testing.T) {
	backend := startTestBackend(t)
	dir := t.TempDir()
	exporter := startTestSidecar(t, Config{
		Listen: "tcp:127.0.0.1:0", CapDir: dir,
		Exports: []Export{{Name: "test", Target: backend}},
	})
	uri := exporter.ListExports()[0].URI
	unknown := uri[:strings.LastIndex(uri, "/")+1] + vat.GenerateID().Base64()
	importer := startTestSidecar(t, Config{
		HeartbeatInterval: Duration(20 * time.Millisecond),
		Imports:           []Import{{Name: "test", URI: uri}, {Name: "unknown", URI: unknown}},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	call := func(name string) error {
		cc, err := grpc.NewClient(importer.Addresses().Imports[name], grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		_, err = testgrpc.NewTestServiceClient(cc).EmptyCall(ctx, &testgrpc.Empty{})
		return err
	}
	if err := call("test"); err != nil {
		t.Fatal(err)
	}
	if err := call("unknown"); status.Code(err) != codes.NotFound {
		t.Fatalf("call on an unknown id: %v, want NOT_FOUND", err)
	}
	m := exporter.Metrics()
	const name = "vatcar_restores_total"
	if ok, unk, bad := counterValue(t, m, name, "result", "ok"), counterValue(t, m, name, "result", "unknown"), counterValue(t, m, name, "result", "error"); ok != 1 || unk < 1 || bad != 0 {
		t.Errorf("restores ok %v, unknown %v, error %v; want 1, at least 1, 0", ok, unk, bad)
	}
	deadline := time.Now().Add(20 * time.Second)
	for counterValue(t, m, name, "result", "empty") == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no empty-id restore (heartbeat) counted")
		}
		time.Sleep(10 * time.Millisecond) // polling interval
	}
}

// TestLimitedCallsShownAtZero: vatcar_vat_limited_calls_total has its
// four reasons from the start, at 0, and counts what the vat reports.
func TestLimitedCallsShownAtZero(t *testing.T) {
	m := NewMetrics()
	const name = "vatcar_vat_limited_calls_total"
	for _, r := range []string{"message size", "answers", "imports", "exports"} {
		if got := counterValue(t, m, name, "reason", r); got != 0 {
			t.Errorf("%s{reason=%q} = %v at start, want 0", name, r, got)
		}
	}
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series := 0
	for _, f := range families {
		if f.GetName() == name {
			series = len(f.GetMetric())
		}
	}
	if series != 4 {
		t.Errorf("%s has %d series at start, want 4", name, series)
	}
	m.limited.WithLabelValues("message size").Inc()
	if got := counterValue(t, m, name, "reason", "message size"); got != 1 {
		t.Errorf("after one: %v", got)
	}
}

// TestCapnpMessageLimit: the vat's decode limit follows the gRPC limits,
// with room for headers, trailers and framing, and no 64 MiB floor; it
// never drops below what one bridge send may carry.
func TestCapnpMessageLimit(t *testing.T) {
	for _, tc := range []struct {
		name              string
		message, metadata int
		want              uint64
	}{
		{"defaults", DefaultMaxMessageSize, DefaultMaxMetadataSize, 4<<20 + 128<<10 + 1<<20},
		{"large", 64 << 20, 1 << 20, 67 << 20},
		{"tiny limits", 1 << 10, 1 << 10, minCapnpMessageLimit},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := capnpMessageLimit(tc.message, tc.metadata); got != tc.want {
				t.Errorf("capnpMessageLimit(%d, %d) = %d, want %d", tc.message, tc.metadata, got, tc.want)
			}
		})
	}
}

// TestLiveHeapMetric checks go_gc_heap_live_bytes: one gauge, the heap the
// last collection found live, which after a collection is positive and no
// more than the heap in use.
func TestLiveHeapMetric(t *testing.T) {
	m := NewMetrics()
	runtime.GC()
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var live, inuse float64
	for _, f := range families {
		switch f.GetName() {
		case "go_gc_heap_live_bytes":
			live = f.GetMetric()[0].GetGauge().GetValue()
		case "go_memstats_heap_inuse_bytes":
			inuse = f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	if live <= 0 || inuse <= 0 || live > inuse {
		t.Errorf("go_gc_heap_live_bytes %v, go_memstats_heap_inuse_bytes %v: want 0 < live <= in use", live, inuse)
	}
}
