package main_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAdminSocket runs a sidecar with the admin API on its default Unix
// socket and health on a port of its own: ctl finds the socket without
// flags, the socket is private, and the health port serves no admin API.
func TestAdminSocket(t *testing.T) {
	run, err := os.MkdirTemp("", "vc") // short: a socket path fits in 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(run) })
	env := []string{"XDG_RUNTIME_DIR=" + run, "VATCAR_ADMIN="}
	backend := startBackend(t)
	p, addrs := startSidecarEnv(t, env, "--admin-listen=", "--health-listen", "127.0.0.1:0",
		"--listen", "tcp:127.0.0.1:0", "--export", "test="+backend)

	sock := filepath.Join(run, "vatcar", "admin.sock")
	if addrs.Admin != "unix:"+sock {
		t.Fatalf("admin = %q, want unix:%s", addrs.Admin, sock)
	}
	for path, want := range map[string]os.FileMode{filepath.Dir(sock): 0o700, sock: 0o600} {
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v, mode %v; want mode %o", path, err, fi.Mode().Perm(), want)
		}
	}

	ctl := func(env []string, args ...string) (int, string) {
		c := startEnv(t, env, append([]string{"ctl"}, args...)...)
		return c.wait(30 * time.Second), c.stderr.String()
	}
	// No --admin: the default socket, found from the same environment.
	code, out := ctl(env, "list-exports")
	if code != 0 || !strings.Contains(out, "test") || !strings.Contains(out, "/...") {
		t.Errorf("ctl list-exports on the default socket: exit %d, want 0 and export test with its id hidden:\n%s", code, out)
	}
	// VATCAR_ADMIN names it (the injector sets it in the sidecar container).
	code, out = ctl([]string{"XDG_RUNTIME_DIR=" + t.TempDir(), "VATCAR_ADMIN=unix:" + sock}, "list-exports")
	if code != 0 || !strings.Contains(out, "test") {
		t.Errorf("ctl list-exports with VATCAR_ADMIN: exit %d:\n%s", code, out)
	}
	// The health port has health and metrics, and no admin API.
	if code, _ := httpGet(addrs.Health + "/readyz"); code != 200 {
		t.Errorf("/readyz on the health port = %d, want 200", code)
	}
	if got := scrape(t, addrs.Health, "vatcar_ready", nil); got != 1 {
		t.Errorf("vatcar_ready = %v, want 1", got)
	}
	code, out = ctl(env, "--admin", addrs.Health, "revoke", "test")
	if code == 0 {
		t.Errorf("ctl revoke on the health port succeeded: the admin API must not be there\n%s", out)
	}
	code, out = ctl(env, "list-exports")
	if code != 0 || strings.Contains(out, "true") {
		t.Errorf("after a revoke on the health port, the export is revoked or ctl fails (exit %d):\n%s", code, out)
	}

	// A missing socket is named in ctl's error.
	code, out = ctl([]string{"XDG_RUNTIME_DIR=" + t.TempDir(), "VATCAR_ADMIN="}, "list-exports")
	if code == 0 || !strings.Contains(out, "cannot reach the admin API") {
		t.Errorf("ctl with no sidecar: exit %d, want an error saying the admin API is unreachable:\n%s", code, out)
	}

	p.stop()
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("after exit, %s: %v, want it removed", sock, err)
	}
}
