package sidecar

import "testing"

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
