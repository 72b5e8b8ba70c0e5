package main_test

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/vatcar/vatcar/sidecar"
)

// TestMetricsCountCalls makes a known number of calls through a pair and
// checks both sidecars' /metrics count exactly those.
func TestMetricsCountCalls(t *testing.T) {
	p := startPair(t)
	ctx := ctxTimeout(t, 30*time.Second)
	const empties, unaries = 5, 3
	for range empties {
		if _, err := p.client.EmptyCall(ctx, &testpb.Empty{}); err != nil {
			t.Fatal(err)
		}
	}
	for range unaries {
		_, err := p.client.UnaryCall(ctx, &testpb.SimpleRequest{
			ResponseStatus: &testpb.EchoStatus{Code: int32(codes.NotFound), Message: "nope"},
		})
		if status.Code(err) != codes.NotFound {
			t.Fatalf("UnaryCall: %v, want NotFound from the backend", err)
		}
	}
	const empty, unary = "/grpc.testing.TestService/EmptyCall", "/grpc.testing.TestService/UnaryCall"
	checks := []struct {
		admin, side, method, code string
		want                      float64
	}{
		{p.imp.Admin, "ingress", empty, "OK", empties},
		{p.exp.Admin, "egress", empty, "OK", empties},
		{p.imp.Admin, "ingress", unary, "NotFound", unaries},
		{p.exp.Admin, "egress", unary, "NotFound", unaries},
	}
	for _, c := range checks {
		labels := map[string]string{"side": c.side, "method": c.method, "code": c.code}
		if got := scrape(t, c.admin, "vatcar_grpc_calls_total", labels); got != c.want {
			t.Errorf("vatcar_grpc_calls_total%v = %v, want %v", labels, got, c.want)
		}
		hist := map[string]string{"side": c.side, "method": c.method}
		if got := scrape(t, c.admin, "vatcar_grpc_call_duration_seconds_count", hist); got != c.want {
			t.Errorf("vatcar_grpc_call_duration_seconds_count%v = %v, want %v", hist, got, c.want)
		}
	}
	if got := scrape(t, p.exp.Admin, "vatcar_restores_total", map[string]string{"result": "ok"}); got != 1 {
		t.Errorf("exporter restores = %v, want 1 (one import, one connection)", got)
	}
	if got := scrape(t, p.imp.Admin, "vatcar_vat_connections", map[string]string{"peer": p.exp.Vat}); got != 1 {
		t.Errorf("importer connections to the exporter = %v, want 1", got)
	}
	if got := scrape(t, p.imp.Admin, "vatcar_grpc_message_bytes_total", map[string]string{"side": "ingress"}); got <= 0 {
		t.Errorf("importer ingress bytes = %v, want > 0", got)
	}
	_, body := httpGet(p.exp.Admin + "/metrics")
	uri := strings.TrimSpace(readFile(t, p.capFile))
	if id := uri[strings.LastIndex(uri, "/")+1:]; strings.Contains(body, id) {
		t.Error("/metrics contains the service id")
	}
}

// TestCtl drives a running sidecar through `vatcar ctl`.
func TestCtl(t *testing.T) {
	p := startPair(t)
	ctl := func(args ...string) string {
		return run(t, append([]string{"ctl", "--admin", p.exp.Admin}, args...)...)
	}
	uri := strings.TrimSpace(readFile(t, p.capFile))
	redacted := uri[:strings.LastIndex(uri, "/")+1] + "..."
	if out := ctl("list-exports"); !strings.Contains(out, "test") || !strings.Contains(out, redacted) || strings.Contains(out, uri) {
		t.Errorf("list-exports does not show export test with its URI redacted (%s):\n%s", redacted, out)
	}
	if out := ctl("--show-uris", "list-exports"); !strings.Contains(out, uri) {
		t.Errorf("list-exports --show-uris does not show the full URI:\n%s", out)
	}
	backend := startBackend(t)
	added := strings.TrimSpace(ctl("add-export", "second="+backend))
	if !strings.HasPrefix(added, "capnp://") {
		t.Errorf("add-export printed %q, want a capnp:// URI", added)
	}
	if out := run(t, "ctl", "--admin", p.imp.Admin, "list-imports"); !strings.Contains(out, "connected") && !strings.Contains(out, "idle") {
		t.Errorf("list-imports does not show a state:\n%s", out)
	}
	if out := ctl("dump"); !strings.Contains(out, "second") {
		t.Errorf("dump does not list export second:\n%s", out)
	}

	ctx := ctxTimeout(t, 30*time.Second)
	if _, err := p.client.EmptyCall(ctx, &testpb.Empty{}); err != nil {
		t.Fatal(err)
	}
	revID := strings.TrimSpace(run(t, "uri", "--revocation-id", uri))
	if out := ctl("revoke", "test"); !strings.HasPrefix(out, revID+"\n") || !strings.Contains(out, "local until "+revID+" is added to the revocation list") {
		t.Errorf("revoke without --revocations printed %q, want the revocation id %s and that the revocation is local", out, revID)
	}
	waitFor(t, 10*time.Second, "calls on the revoked export to fail", func() bool {
		_, err := p.client.EmptyCall(ctx, &testpb.Empty{})
		return err != nil
	})

	// Invalid input is refused by the server's validation with exit 2.
	bad := start(t, "ctl", "--admin", p.exp.Admin, "add-export", "-bad=nowhere")
	if code := bad.wait(20 * time.Second); code != 2 {
		t.Errorf("ctl add-export with bad values: exit %d, want 2\n%s", code, bad.stderr.String())
	}
	if out := bad.stderr.String(); !strings.Contains(out, "name: want") || !strings.Contains(out, "target: want") {
		t.Errorf("ctl error does not list both violations:\n%s", out)
	}
}

// TestKeygenAndURI checks that `vatcar uri` predicts the URI `vatcar run`
// serves for the same key, address and name.
func TestKeygenAndURI(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "k.pem")
	digest := strings.TrimSpace(run(t, "keygen", "--secret-key-file", key))
	if !strings.HasPrefix(digest, "sha-256:") {
		t.Fatalf("keygen printed %q, want sha-256:...", digest)
	}
	if p := start(t, "keygen", "--secret-key-file", key); p.wait(10*time.Second) == 0 {
		t.Error("keygen overwrote an existing key file")
	}
	backend := startBackend(t)
	exporter, a := startSidecar(t, "--listen", "tcp:127.0.0.1:0", "--secret-key-file", key,
		"--export", "svc="+backend, "--cap-dir", dir)
	if a.Vat != digest {
		t.Errorf("sidecar digest %s, keygen printed %s", a.Vat, digest)
	}
	want := strings.TrimSpace(readFile(t, filepath.Join(dir, "svc.cap")))
	got := strings.TrimSpace(run(t, "uri", "--secret-key-file", key, "--public-address", a.Listen, "svc"))
	if got != want {
		t.Errorf("vatcar uri = %s, cap file has %s", got, want)
	}
	exporter.stop()
}

// TestDemo runs `vatcar demo`.
func TestDemo(t *testing.T) {
	out := run(t, "demo")
	for _, want := range []string{"capnp://sha-256:", "unary", "streaming", "ok:"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}

// TestCPUs checks that `vatcar run` sets GOMAXPROCS from --cpus, defaults to
// sidecar.DefaultCPUs, and leaves a GOMAXPROCS from the environment alone;
// the runtime's own gauge on /metrics reports it.
func TestCPUs(t *testing.T) {
	tests := []struct {
		name string
		env  []string
		args []string
		want float64
	}{
		{"default", nil, nil, sidecar.DefaultCPUs},
		{"flag", nil, []string{"--cpus", "3"}, 3},
		{"environment", []string{"GOMAXPROCS=3"}, nil, 3},
		{"flag over environment", []string{"GOMAXPROCS=3"}, []string{"--cpus", "2"}, 2},
		{"environment the runtime ignores", []string{"GOMAXPROCS=zero"}, nil, sidecar.DefaultCPUs},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, a := startSidecarEnv(t, tt.env, tt.args...)
			if got := scrape(t, a.Admin, "go_sched_gomaxprocs_threads", nil); got != tt.want {
				t.Errorf("GOMAXPROCS = %v, want %v", got, tt.want)
			}
		})
	}
}
