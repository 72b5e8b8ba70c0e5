package main

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// These test `vatcar inject probe` in-process; it is in every build.
// nok8s_test.go runs the sidecar image's binary against a real sidecar.

// readyAfter answers 503 to the first n requests, then 200.
func readyAfter(t *testing.T, n int32) (*httptest.Server, *atomic.Int32) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if calls.Add(1) <= n {
			http.Error(w, "starting", http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, &calls
}

func TestInjectProbe(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	var out bytes.Buffer
	if err := runInject(context.Background(), []string{"probe", srv.URL + "/readyz"}, nil, &out, &out); err != nil {
		t.Fatalf("probe of a ready endpoint: %v", err)
	}
	err := runInject(context.Background(), []string{"probe", "--timeout=1s", srv.URL + "/healthz"}, nil, &out, &out)
	if !errors.Is(err, errProbe) || errors.Is(err, errUsage) {
		t.Fatalf("probe of a 503 = %v, want errProbe (exit 1)", err)
	}
	for _, args := range [][]string{{"probe"}, {"probe", srv.URL, srv.URL}, {"probe", "--wait=soon", srv.URL}} {
		if err := runInject(context.Background(), args, nil, &out, &out); !errors.Is(err, errUsage) {
			t.Errorf("vatcar inject %q: err = %v, want a usage error (exit 2)", args, err)
		}
	}
}

func TestProbeWaitsUntilReady(t *testing.T) {
	srv, calls := readyAfter(t, 3)
	if err := probe(context.Background(), srv.URL, probeConfig{wait: 30 * time.Second, interval: time.Millisecond}); err != nil {
		t.Fatalf("probe with wait: %v", err)
	}
	if got := calls.Load(); got != 4 {
		t.Fatalf("made %d requests, want 4 (three failures, then success)", got)
	}
}

func TestProbeWithoutWaitTriesOnce(t *testing.T) {
	srv, calls := readyAfter(t, 1)
	if err := probe(context.Background(), srv.URL, probeConfig{}); !errors.Is(err, errProbe) {
		t.Fatalf("probe of a 503 = %v, want errProbe", err)
	}
	if got := calls.Load(); got != 1 {
		t.Fatalf("made %d requests, want 1", got)
	}
}

func TestProbeWaitGivesUp(t *testing.T) {
	srv, _ := readyAfter(t, 1<<30)
	err := probe(context.Background(), srv.URL, probeConfig{wait: 50 * time.Millisecond, interval: 5 * time.Millisecond})
	if !errors.Is(err, errProbe) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("probe that never succeeds = %v, want errProbe after the deadline", err)
	}
}

// TestProbeCAFile checks that --ca-file is what an https URL is verified
// against: with the server's CA the probe passes, without it it fails.
func TestProbeCAFile(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer srv.Close()
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := probe(context.Background(), srv.URL, probeConfig{caFile: ca}); err != nil {
		t.Fatalf("probe with the server's CA: %v", err)
	}
	if err := probe(context.Background(), srv.URL, probeConfig{}); !errors.Is(err, errProbe) {
		t.Fatalf("probe without the server's CA = %v, want errProbe (unknown authority)", err)
	}
	notPEM := filepath.Join(dir, "empty.crt")
	if err := os.WriteFile(notPEM, []byte("nothing"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, file := range []string{notPEM, filepath.Join(dir, "missing.crt")} {
		if err := probe(context.Background(), srv.URL, probeConfig{caFile: file}); err == nil || errors.Is(err, errProbe) {
			t.Errorf("probe with CA file %s = %v, want a file error", filepath.Base(file), err)
		}
	}
}
