package main

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// These call runInject in-process; the injector itself is tested in package
// k8s. They check the adapter: flags, files, stdin, exit classes.

const goldenDir = "../../k8s/testdata/inject"

func TestInjectFileMatchesGolden(t *testing.T) {
	want, err := os.ReadFile(filepath.Join(goldenDir, "out", "pod-exports.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	in := filepath.Join(goldenDir, "in", "pod-exports.yaml")
	var stdout, stderr bytes.Buffer
	if err := runInject(context.Background(), []string{"-f", in}, strings.NewReader(""), &stdout, &stderr); err != nil {
		t.Fatalf("inject -f %s: %v\n%s", in, err, stderr.String())
	}
	if !bytes.Equal(stdout.Bytes(), want) {
		t.Fatalf("inject -f output differs from the golden file\n--- got\n%s", stdout.Bytes())
	}
	// The same through standard input.
	data, _ := os.ReadFile(in)
	stdout.Reset()
	if err := runInject(context.Background(), []string{"-f", "-"}, bytes.NewReader(data), &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(stdout.Bytes(), want) {
		t.Fatal("inject -f - output differs from inject -f FILE")
	}
}

func TestInjectWarningsGoToStderr(t *testing.T) {
	in := filepath.Join(goldenDir, "in", "job.yaml")
	var stdout, stderr bytes.Buffer
	if err := runInject(context.Background(), []string{"--kube-version", "1.28", "-f", in}, nil, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr.String(), "warning: Job/report:") || strings.Contains(stdout.String(), "warning") {
		t.Fatalf("stderr %q, stdout has warnings: %v", stderr.String(), strings.Contains(stdout.String(), "warning"))
	}
}

func TestInjectUsageErrors(t *testing.T) {
	dir := t.TempDir()
	badConfig := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(badConfig, []byte("vatPort: 99999\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{},
		{"-f"},
		{"-f", "x.yaml", "extra"},
		{"--nope"},
		{"--config", badConfig, "-f", "-"},
		{"--kube-version", "new", "-f", "-"},
		{"serve"},
		{"serve", "--tls-cert", filepath.Join(dir, "missing.crt"), "--tls-key", filepath.Join(dir, "missing.key")},
		{"serve", "--log-format", "xml"},
		{"probe"},
		{"selftest", "extra"},
	} {
		var out bytes.Buffer
		err := runInject(context.Background(), args, strings.NewReader(""), &out, &out)
		if !errors.Is(err, errUsage) {
			t.Errorf("vatcar inject %q: err = %v, want a usage error (exit 2)", args, err)
		}
	}
}

func TestInjectBadManifestIsNotAUsageError(t *testing.T) {
	var out bytes.Buffer
	err := runInject(context.Background(), []string{"-f", "-"}, strings.NewReader("kind: [\n"), &out, &out)
	if err == nil || errors.Is(err, errUsage) {
		t.Fatalf("bad YAML: err = %v, want a plain error (exit 1)", err)
	}
	err = runInject(context.Background(), []string{"-f", filepath.Join(t.TempDir(), "none.yaml")}, nil, &out, &out)
	if err == nil || errors.Is(err, errUsage) {
		t.Fatalf("missing file: err = %v, want a plain error", err)
	}
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
	if err := runInject(context.Background(), []string{"probe", "--timeout=1s", srv.URL + "/healthz"}, nil, &out, &out); err == nil {
		t.Fatal("probe of a 503 succeeded")
	}
}
