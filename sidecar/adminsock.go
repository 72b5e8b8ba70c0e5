package sidecar

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The admin API mints, revokes and adds exports, so it is the sidecar
// owner's: by default it listens on a Unix socket (mode 0600) in a directory
// only the sidecar's user may enter (mode 0700). Every container of a pod
// shares its loopback, so a TCP admin port is reachable by all of them; TCP
// is used only when --admin-listen names a host:port.

// unixPrefix starts an --admin-listen value naming a Unix socket.
const unixPrefix = "unix:"

// maxSocketPath is the longest Unix socket path Linux takes (sun_path is 108
// bytes with the terminating NUL).
const maxSocketPath = 107

// DefaultAdminSocket returns the admin API's Unix socket path when
// Config.AdminListen is empty: $XDG_RUNTIME_DIR/vatcar/admin.sock when
// XDG_RUNTIME_DIR is an absolute path, else vatcar-UID/admin.sock in the
// temporary directory ($TMPDIR or /tmp). `vatcar ctl` looks in the same
// place, so both agree when run by the same user in the same environment.
func DefaultAdminSocket() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); filepath.IsAbs(d) {
		return filepath.Join(d, "vatcar", "admin.sock")
	}
	return filepath.Join(os.TempDir(), "vatcar-"+strconv.Itoa(os.Getuid()), "admin.sock")
}

// DefaultAdminListen returns the --admin-listen default: "unix:" followed by
// DefaultAdminSocket().
func DefaultAdminListen() string { return unixPrefix + DefaultAdminSocket() }

// adminOnTCP reports whether an --admin-listen value names a TCP host:port.
func adminOnTCP(addr string) bool {
	return addr != "" && addr != AdminListenOff && !strings.HasPrefix(addr, unixPrefix)
}

// checkAdminListen checks an --admin-listen value other than "" and "off":
// unix:/abs/path or host:port.
func checkAdminListen(addr string) error {
	if path, ok := strings.CutPrefix(addr, unixPrefix); ok {
		switch {
		case !filepath.IsAbs(path):
			return errors.New("unix socket path must be absolute")
		case len(path) > maxSocketPath:
			return fmt.Errorf("unix socket path is %d bytes, longer than the %d a socket address holds", len(path), maxSocketPath)
		case strings.HasSuffix(path, "/"):
			return errors.New("unix socket path names a directory")
		}
		return nil
	}
	return CheckHostPort(addr)
}

// listenAdmin listens on an --admin-listen or --health-listen value: a Unix
// socket in a private directory, or TCP (an empty host means 127.0.0.1).
func listenAdmin(addr string) (net.Listener, error) {
	path, ok := strings.CutPrefix(addr, unixPrefix)
	if !ok {
		return net.Listen("tcp", loopbackIfNoHost(addr))
	}
	if err := privateDir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	if err := clearStaleSocket(path); err != nil {
		return nil, err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	// The directory already keeps others out; the mode says so again.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod admin socket: %w", err)
	}
	return ln, nil
}

// privateDir makes dir (and missing parents) with mode 0700, or checks that
// an existing dir is a real directory of this user and makes it 0700. A
// directory of another user is refused: that user could reach the socket.
func privateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("admin socket directory: %w", err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("admin socket directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("admin socket directory %s is not a directory (a symbolic link?)", dir)
	}
	if uid, ok := fileOwner(fi); ok && uid != os.Getuid() {
		return fmt.Errorf("admin socket directory %s belongs to uid %d, not to this process's uid %d: others could reach the admin API; choose another --admin-listen", dir, uid, os.Getuid())
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("admin socket directory: %w", err)
		}
	}
	return nil
}

// errSocketInUse says an admin socket path is served by a live process.
var errSocketInUse = errors.New("socket in use")

// fallbackAdminListen is the admin socket of a sidecar that found the
// default one taken by another sidecar: admin-PID.sock beside it.
func fallbackAdminListen() string {
	return unixPrefix + filepath.Join(filepath.Dir(DefaultAdminSocket()), "admin-"+strconv.Itoa(os.Getpid())+".sock")
}

// clearStaleSocket removes a socket left at path by a sidecar that is gone;
// a socket something still answers on is in use, and anything else at path
// is not ours to remove.
func clearStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("admin socket path %s exists and is not a socket", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("%w: admin socket %s is in use by another process (another sidecar?): stop it or choose another --admin-listen", errSocketInUse, path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale admin socket: %w", err)
	}
	return nil
}
