package main_test

import (
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
)

// TestUnixSockets runs the path with the vat and the app on Unix sockets.
func TestUnixSockets(t *testing.T) {
	dir := t.TempDir()
	appSock := filepath.Join(dir, "app.sock")
	ln, err := net.Listen("unix", appSock)
	if err != nil {
		t.Fatal(err)
	}
	serveBackend(t, ln)

	_, exp := startSidecar(t, "--listen", "unix:"+filepath.Join(dir, "vat.sock"),
		"--secret-key-file", filepath.Join(dir, "k.pem"), "--export", "app=unix:"+appSock, "--cap-dir", dir)
	uri := strings.TrimSpace(readFile(t, filepath.Join(dir, "app.cap")))
	if !strings.HasPrefix(uri, "capnp://sha-256:") || !strings.Contains(uri, "@"+dir+"/vat.sock/") {
		t.Errorf("Unix socket URI = %s, want capnp://sha-256:...@%s/vat.sock/ID", uri, dir)
	}
	if exp.Listen != "unix:"+filepath.Join(dir, "vat.sock") {
		t.Errorf("bound listen address = %s", exp.Listen)
	}
	_, imp := startSidecar(t, "--import", "app=@"+filepath.Join(dir, "app.cap"))
	client := testgrpc.NewTestServiceClient(dial(t, imp.Imports["app"]))
	interop.DoLargeUnaryCall(ctxTimeout(t, 20*time.Second), client)
}

// TestInsecureMode runs the path with TLS off on both sides, and checks that
// a secure sidecar refuses an insecure URI at start-up.
func TestInsecureMode(t *testing.T) {
	backend := startBackend(t)
	dir := t.TempDir()
	exporter, _ := startSidecar(t, "--insecure", "--listen", "tcp:127.0.0.1:0", "--export", "test="+backend, "--cap-dir", dir)
	capFile := filepath.Join(dir, "test.cap")
	if uri := readFile(t, capFile); !strings.HasPrefix(uri, "capnp://insecure@127.0.0.1:") {
		t.Errorf("insecure URI = %q", uri)
	}
	if out := exporter.stderr.String(); !strings.Contains(out, "INSECURE") {
		t.Errorf("insecure mode is not announced loudly:\n%s", out)
	}
	_, imp := startSidecar(t, "--insecure", "--import", "test=@"+capFile)
	interop.DoEmptyUnaryCall(ctxTimeout(t, 20*time.Second), testgrpc.NewTestServiceClient(dial(t, imp.Imports["test"])))

	secure := start(t, "run", "--admin-listen", "127.0.0.1:0", "--import", "test=@"+capFile)
	if code := secure.wait(20 * time.Second); code != 2 {
		t.Errorf("secure sidecar importing an insecure URI: exit %d, want 2\n%s", code, secure.stderr.String())
	}
}

// TestLogsKeepSecrets runs a pair at the default log level in JSON and checks
// that every line is JSON and that no line carries the sturdy ref's id.
func TestLogsKeepSecrets(t *testing.T) {
	p := startPairArgs(t, []string{"--log-format", "json", "--log-level", "info"}, "--log-format", "json", "--log-level", "info")
	interop.DoEmptyUnaryCall(ctxTimeout(t, 20*time.Second), p.client)
	uri := strings.TrimSpace(readFile(t, p.capFile))
	id := uri[strings.LastIndex(uri, "/")+1:]
	for _, proc := range []*proc{p.exporter, p.importer} {
		out := proc.stderr.String()
		if strings.Contains(out, id) {
			t.Errorf("logs at info level contain the service id:\n%s", out)
		}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			var v map[string]any
			if err := json.Unmarshal([]byte(line), &v); err != nil {
				t.Errorf("log line is not JSON: %q", line)
			}
		}
	}
}

// TestMaxMessageSize sends an 8 MiB response through sidecars run with
// --max-message-size 16MiB (TestOversizeMessageFailsOnlyThatCall checks
// what the 4 MiB default refuses).
func TestMaxMessageSize(t *testing.T) {
	const big = 8 << 20
	req := &testgrpc.SimpleRequest{ResponseSize: big}
	big16 := []string{"--max-message-size", "16MiB"}
	p := startPairArgs(t, big16, big16...)
	ctx := ctxTimeout(t, 30*time.Second)
	resp, err := p.client.UnaryCall(ctx, req, grpc.MaxCallRecvMsgSize(16<<20))
	if err != nil || len(resp.GetPayload().GetBody()) != big {
		t.Fatalf("8 MiB response with --max-message-size 16MiB: %d bytes, %v", len(resp.GetPayload().GetBody()), err)
	}
}
