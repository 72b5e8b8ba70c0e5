package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

var sink [][]byte

// TestScrapeGoCountsAllocations reads a real registry's Go collector over
// HTTP, as the harness reads a sidecar's /metrics, and checks that the
// allocations it reports grow by at least what the test allocated.
func TestScrapeGoCountsAllocations(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector())
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	ctx := context.Background()

	before, err := scrapeGo(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	const n = 10000
	for range n {
		sink = append(sink, make([]byte, 64))
	}
	sink = nil
	after, err := scrapeGo(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	if after.Goroutines < 1 {
		t.Errorf("goroutines: got %v, want at least 1", after.Goroutines)
	}
	rows := runtimeRows("s", []runtimeSample{{name: "x", rt: before, ok: true}}, []runtimeSample{{name: "x", rt: after, ok: true}}, n)
	if len(rows) != 1 || rows[0].AllocsPerCall < 1 {
		t.Fatalf("rows %+v: want one with at least 1 allocation per call (%v -> %v mallocs)", rows, before.Mallocs, after.Mallocs)
	}
}

// TestScrapeGoRejectsOtherMetrics fails on an endpoint that is not a Go
// program's, naming it, rather than reporting zeros.
func TestScrapeGoRejectsOtherMetrics(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("# TYPE up gauge\nup 1\n"))
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	_, err := scrapeGo(context.Background(), addr)
	if err == nil || !strings.Contains(err.Error(), "go_goroutines") || !strings.Contains(err.Error(), addr) {
		t.Fatalf("got %v, want an error naming the missing metrics and the address", err)
	}
	rows := runtimeRows("s", []runtimeSample{{name: "x"}}, []runtimeSample{{name: "x"}}, 10)
	if len(rows) != 0 {
		t.Fatalf("rows from unread samples: %+v", rows)
	}
}

// TestMedianRuntime takes each instance's median over rounds.
func TestMedianRuntime(t *testing.T) {
	got := medianRuntime([][]instanceRuntime{
		{{Scenario: "s", Name: "a", AllocsPerCall: 10, Goroutines: 5}, {Scenario: "s", Name: "b", AllocsPerCall: 1, Goroutines: 1}},
		{{Scenario: "s", Name: "a", AllocsPerCall: 30, Goroutines: 7}},
		{{Scenario: "s", Name: "a", AllocsPerCall: 20, Goroutines: 9}, {Scenario: "s", Name: "b", AllocsPerCall: 3, Goroutines: 3}},
	})
	want := []instanceRuntime{{Scenario: "s", Name: "a", AllocsPerCall: 20, Goroutines: 7}, {Scenario: "s", Name: "b", AllocsPerCall: 2, Goroutines: 2}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}
