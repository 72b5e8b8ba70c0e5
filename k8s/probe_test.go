package k8s

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// readyAfter answers 503 to the first n requests, then 200.
func readyAfter(n int32) (*httptest.Server, *atomic.Int32) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if calls.Add(1) <= n {
			http.Error(w, "starting", http.StatusServiceUnavailable)
		}
	}))
	return srv, &calls
}

func TestProbeWaitsUntilReady(t *testing.T) {
	srv, calls := readyAfter(3)
	defer srv.Close()
	err := Probe(context.Background(), srv.URL+"/readyz", ProbeConfig{Wait: 30 * time.Second, Interval: time.Millisecond})
	if err != nil {
		t.Fatalf("Probe with Wait: %v", err)
	}
	if got := calls.Load(); got != 4 {
		t.Fatalf("made %d requests, want 4 (three failures, then success)", got)
	}
}

func TestProbeWithoutWaitTriesOnce(t *testing.T) {
	srv, calls := readyAfter(1)
	defer srv.Close()
	if err := Probe(context.Background(), srv.URL, ProbeConfig{}); !errors.Is(err, ErrProbe) {
		t.Fatalf("Probe of a 503 = %v, want ErrProbe", err)
	}
	if got := calls.Load(); got != 1 {
		t.Fatalf("made %d requests, want 1", got)
	}
}

func TestProbeWaitGivesUp(t *testing.T) {
	srv, _ := readyAfter(1 << 30)
	defer srv.Close()
	err := Probe(context.Background(), srv.URL, ProbeConfig{Wait: 50 * time.Millisecond, Interval: 5 * time.Millisecond})
	if !errors.Is(err, ErrProbe) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Probe that never succeeds = %v, want ErrProbe and DeadlineExceeded", err)
	}
}

func TestProbeBadCAFile(t *testing.T) {
	if err := Probe(context.Background(), "https://127.0.0.1:1/", ProbeConfig{CAFile: "/nonexistent/ca.crt"}); err == nil {
		t.Fatal("Probe with a missing CA file succeeded")
	}
}
