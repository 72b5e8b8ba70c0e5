package probe

import (
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

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

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

func TestProbeWaitsUntilReady(t *testing.T) {
	srv, calls := readyAfter(t, 3)
	if err := Get(context.Background(), srv.URL, Config{Wait: 30 * time.Second, Interval: time.Millisecond}); err != nil {
		t.Fatalf("probe with Wait: %v", err)
	}
	if got := calls.Load(); got != 4 {
		t.Fatalf("made %d requests, want 4 (three failures, then success)", got)
	}
}

func TestProbeWithoutWaitTriesOnce(t *testing.T) {
	srv, calls := readyAfter(t, 1)
	if err := Get(context.Background(), srv.URL, Config{}); !errors.Is(err, ErrFailed) {
		t.Fatalf("probe of a 503 = %v, want ErrFailed", err)
	}
	if got := calls.Load(); got != 1 {
		t.Fatalf("made %d requests, want 1", got)
	}
}

func TestProbeWaitGivesUp(t *testing.T) {
	srv, _ := readyAfter(t, 1<<30)
	err := Get(context.Background(), srv.URL, Config{Wait: 50 * time.Millisecond, Interval: 5 * time.Millisecond})
	if !errors.Is(err, ErrFailed) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("probe that never succeeds = %v, want ErrFailed after the deadline", err)
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
	if err := Get(context.Background(), srv.URL, Config{CAFile: ca}); err != nil {
		t.Fatalf("probe with the server's CA: %v", err)
	}
	if err := Get(context.Background(), srv.URL, Config{}); !errors.Is(err, ErrFailed) {
		t.Fatalf("probe without the server's CA = %v, want ErrFailed (unknown authority)", err)
	}
	notPEM := filepath.Join(dir, "empty.crt")
	if err := os.WriteFile(notPEM, []byte("nothing"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, file := range []string{notPEM, filepath.Join(dir, "missing.crt")} {
		if err := Get(context.Background(), srv.URL, Config{CAFile: file}); err == nil || errors.Is(err, ErrFailed) {
			t.Errorf("probe with CA file %s = %v, want a file error", filepath.Base(file), err)
		}
	}
}
