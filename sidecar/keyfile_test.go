package sidecar

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vatcar/vatcar/vat"
)

// TestKeyFileModeWarning: a key file readable by group or others is used,
// with a warning naming the file and its mode; a private one, a missing one
// (created 0600) and one in a Kubernetes Secret volume get none.
func TestKeyFileModeWarning(t *testing.T) {
	const warning = "the vat key file is readable by its group or others"
	writeKey := func(t *testing.T, path string, mode os.FileMode) {
		t.Helper()
		k, err := vat.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, k.PEM(), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil { // past the umask
			t.Fatal(err)
		}
	}
	secretVolume := func(t *testing.T) string {
		// The kubelet's layout: ..data -> ..2026_..., key.pem -> ..data/key.pem.
		dir := t.TempDir()
		if err := os.Mkdir(filepath.Join(dir, "..2026_12_06"), 0o755); err != nil {
			t.Fatal(err)
		}
		writeKey(t, filepath.Join(dir, "..2026_12_06", "key.pem"), 0o444)
		if err := os.Symlink("..2026_12_06", filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("..data/key.pem", filepath.Join(dir, "key.pem")); err != nil {
			t.Fatal(err)
		}
		return filepath.Join(dir, "key.pem")
	}
	for _, tc := range []struct {
		name string
		path func(t *testing.T) string
		warn bool
	}{
		{"private", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "vat.pem")
			writeKey(t, p, 0o600)
			return p
		}, false},
		{"group readable", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "vat.pem")
			writeKey(t, p, 0o640)
			return p
		}, true},
		{"world readable", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "vat.pem")
			writeKey(t, p, 0o644)
			return p
		}, true},
		{"created", func(t *testing.T) string { return filepath.Join(t.TempDir(), "keys", "vat.pem") }, false},
		{"kubernetes secret volume", secretVolume, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.path(t)
			var logs bytes.Buffer
			s, err := New(Config{SecretKeyFile: path, AdminListen: "off"}, slog.New(slog.NewTextHandler(&logs, nil)))
			if err != nil {
				t.Fatal(err)
			}
			s.Close()
			got := strings.Contains(logs.String(), warning)
			if got != tc.warn {
				t.Fatalf("warned %v, want %v; logs:\n%s", got, tc.warn, logs.String())
			}
			if got && (!strings.Contains(logs.String(), path) || !strings.Contains(logs.String(), "mode=06")) {
				t.Errorf("warning does not name the file and its mode:\n%s", logs.String())
			}
		})
	}
}
