package sidecar

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	adminv1 "github.com/vatcar/vatcar/proto/vatcar/admin/v1"
)

// shortTempDir is a temporary directory with a short path: a Unix socket's
// path must fit in 107 bytes, and t.TempDir's names grow with the test's.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "vc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func TestAdminSocketByDefault(t *testing.T) {
	run := shortTempDir(t)
	t.Setenv("XDG_RUNTIME_DIR", run)
	s, err := New(Config{HealthListen: "127.0.0.1:0"}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	sock := filepath.Join(run, "vatcar", "admin.sock")
	addrs := s.Addresses()
	if addrs.Admin != "unix:"+sock {
		t.Errorf("Addresses().Admin = %q, want unix:%s", addrs.Admin, sock)
	}
	if got := DefaultAdminListen(); got != "unix:"+sock {
		t.Errorf("DefaultAdminListen() = %q, want unix:%s (what vatcar ctl dials)", got, sock)
	}
	for path, want := range map[string]os.FileMode{filepath.Dir(sock): 0o700, sock: 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("mode of %s = %o, want %o", path, got, want)
		}
	}

	// The admin API answers on the socket.
	admin := adminv1.NewAdminServiceClient(dialAdmin(t, addrs.Admin))
	if _, err := admin.ListExports(context.Background(), &adminv1.ListExportsRequest{}); err != nil {
		t.Fatalf("ListExports on the socket: %v", err)
	}
	// The health listener serves health and metrics, and no admin API.
	if addrs.Health == "" || addrs.Health == addrs.Admin {
		t.Fatalf("Addresses().Health = %q, want a port of its own", addrs.Health)
	}
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		resp, err := http.Get("http://" + addrs.Health + path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s on the health port = %d, want 200", path, resp.StatusCode)
		}
	}
	onHealth := adminv1.NewAdminServiceClient(dialAdmin(t, addrs.Health))
	if _, err := onHealth.ListExports(context.Background(), &adminv1.ListExportsRequest{}); err == nil {
		t.Error("ListExports on the health port succeeded: the admin API must not be served there")
	}
	if _, err := onHealth.Revoke(context.Background(), &adminv1.RevokeRequest{Name: "x"}); status.Code(err) == codes.NotFound || err == nil {
		t.Errorf("Revoke on the health port reached the admin API (%v)", err)
	}

	// A second sidecar on the default takes a socket of its own beside it.
	other, err := New(Config{HealthListen: AdminListenOff}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Start(); err != nil {
		t.Fatalf("second sidecar on the default socket: Start() = %v, want a socket of its own", err)
	}
	if got := other.Addresses().Admin; got == addrs.Admin || !strings.Contains(got, "admin-") {
		t.Errorf("second sidecar's admin socket = %q, want its own beside %q", got, addrs.Admin)
	}
	other.Close()
	// One given explicitly is never moved: in use is an error that says so.
	explicit, err := New(Config{AdminListen: addrs.Admin, HealthListen: AdminListenOff}, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = explicit.Start()
	if err == nil || !strings.Contains(err.Error(), "in use") {
		explicit.Close()
		t.Errorf("second sidecar given the same socket: Start() = %v, want an error saying the socket is in use", err)
	}

	// The socket goes away with the sidecar.
	s.Close()
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("after Close, %s: %v, want it removed", sock, err)
	}
}

func TestAdminListenTCPSharesHealthPort(t *testing.T) {
	// --admin-listen HOST:PORT without --health-listen: one port serves
	// both, as before the listeners were split.
	s := startTestSidecar(t, Config{AdminListen: "127.0.0.1:0"})
	addrs := s.Addresses()
	if addrs.Admin != addrs.Health {
		t.Fatalf("Admin %q, Health %q: want one shared port", addrs.Admin, addrs.Health)
	}
	resp, err := http.Get("http://" + addrs.Health + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/readyz = %d, want 200", resp.StatusCode)
	}
	admin := adminv1.NewAdminServiceClient(dialAdmin(t, addrs.Admin))
	if _, err := admin.ListExports(context.Background(), &adminv1.ListExportsRequest{}); err != nil {
		t.Errorf("ListExports on the shared port: %v", err)
	}
}

func TestPrivateDir(t *testing.T) {
	base := shortTempDir(t)

	loose := filepath.Join(base, "loose")
	if err := os.Mkdir(loose, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(loose, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := privateDir(loose); err != nil {
		t.Fatalf("privateDir(own 0777 dir) = %v, want it made private", err)
	}
	if fi, _ := os.Stat(loose); fi.Mode().Perm() != 0o700 {
		t.Errorf("mode after privateDir = %o, want 700", fi.Mode().Perm())
	}

	nested := filepath.Join(base, "a", "b")
	if err := privateDir(nested); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(nested); fi.Mode().Perm() != 0o700 {
		t.Errorf("mode of a new dir = %o, want 700", fi.Mode().Perm())
	}

	link := filepath.Join(base, "link")
	if err := os.Symlink(loose, link); err != nil {
		t.Fatal(err)
	}
	if err := privateDir(link); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("privateDir(symlink) = %v, want refused as not a directory", err)
	}
}

func TestClearStaleSocket(t *testing.T) {
	dir := shortTempDir(t)

	// A socket nobody listens on is removed.
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if err := clearStaleSocket(stale); err != nil {
		t.Fatalf("clearStaleSocket(stale) = %v", err)
	}
	if _, err := os.Lstat(stale); !os.IsNotExist(err) {
		t.Errorf("stale socket still there: %v", err)
	}

	// A regular file is not ours to remove.
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := clearStaleSocket(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("clearStaleSocket(file) = %v, want refused as not a socket", err)
	}
	if _, err := os.Stat(file); err != nil {
		t.Errorf("the file was removed: %v", err)
	}
}

func TestCheckAdminListen(t *testing.T) {
	for _, tt := range []struct {
		addr, wantErr string
	}{
		{"unix:/run/vatcar/admin.sock", ""},
		{"127.0.0.1:7460", ""},
		{":7460", ""},
		{"unix:admin.sock", "absolute"},
		{"unix:/" + strings.Repeat("x", 120), "longer than"},
		{"unix:/run/", "directory"},
		{"localhost", "missing port"},
	} {
		err := checkAdminListen(tt.addr)
		if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("checkAdminListen(%q) = %v, want %q", tt.addr, err, tt.wantErr)
		}
	}
}

func TestAdminAndHealthDefaults(t *testing.T) {
	for _, tt := range []struct {
		name                  string
		admin, health         string
		wantAdmin, wantHealth string
	}{
		{"none given", "", "", DefaultAdminListen(), DefaultHealthListen},
		{"admin on TCP shares its port", "127.0.0.1:9000", "", "127.0.0.1:9000", "127.0.0.1:9000"},
		{"admin on TCP, health apart", "127.0.0.1:9000", "0.0.0.0:9001", "127.0.0.1:9000", "0.0.0.0:9001"},
		{"admin socket", "unix:/run/a.sock", "", "unix:/run/a.sock", DefaultHealthListen},
		{"admin off", "off", "", "off", DefaultHealthListen},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := Config{AdminListen: tt.admin, HealthListen: tt.health}.withDefaults()
			if c.AdminListen != tt.wantAdmin || c.HealthListen != tt.wantHealth {
				t.Errorf("admin, health = %q, %q; want %q, %q", c.AdminListen, c.HealthListen, tt.wantAdmin, tt.wantHealth)
			}
		})
	}
}
