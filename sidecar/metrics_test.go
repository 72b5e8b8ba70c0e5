package sidecar

import (
	"maps"
	"testing"

	"github.com/vatcar/vatcar/internal/buildinfo"
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
