package sidecar

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/vatcar/vatcar/vat"
)

// TestCapDirPrunesRemovedExports: the cap file of an export dropped from
// the config between runs is removed at start, and one that appears for an
// export not served is removed at reload; files vatcar did not write (other
// vats' URIs, other names, non-URIs, links) are left alone.
func TestCapDirPrunesRemovedExports(t *testing.T) {
	backend := startTestBackend(t)
	dir := t.TempDir()
	key := filepath.Join(dir, "key", "vat.pem")
	caps := filepath.Join(dir, "caps")
	cfg := Config{Listen: "tcp:127.0.0.1:0", SecretKeyFile: key, CapDir: caps, AdminListen: "off", HealthListen: "off",
		Exports: []Export{{Name: "old", Target: backend}, {Name: "keep", Target: backend}}}
	first, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	first.Close()
	oldURI := readCap(t, filepath.Join(caps, "old.cap"))

	other, err := vat.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	foreign := vat.FormatURI(vat.Locator{Address: vat.Address{Network: "tcp", Host: "127.0.0.1", Port: 7000}, Digest: other.Digest()}, other.DeriveID("x"))
	leave := map[string]string{
		"foreign.cap":    foreign + "\n", // another vat's
		"notes.txt":      oldURI + "\n",  // not NAME.cap
		"bad name.cap":   oldURI + "\n",  // not an export name
		"garbage.cap":    "hello\n",
		"import-in.cap ": oldURI + "\n",
	}
	for name, content := range leave {
		if err := os.WriteFile(filepath.Join(caps, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("old.cap", filepath.Join(caps, "link.cap")); err != nil {
		t.Fatal(err)
	}

	cfg.Exports = []Export{{Name: "keep", Target: backend}}
	s := startTestSidecar(t, cfg)
	if _, err := os.Stat(filepath.Join(caps, "old.cap")); !os.IsNotExist(err) {
		t.Errorf("old.cap of the removed export: %v, want it removed at start", err)
	}
	if got := readCap(t, filepath.Join(caps, "keep.cap")); got == "" {
		t.Error("keep.cap is empty")
	}
	for name := range leave {
		if _, err := os.Stat(filepath.Join(caps, name)); err != nil {
			t.Errorf("%q was removed: %v", name, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(caps, "link.cap")); err != nil {
		t.Errorf("link.cap was removed: %v", err)
	}

	// A stale file of this vat appears (a copy from an older run): reload
	// removes it and keeps the served one.
	if err := os.WriteFile(filepath.Join(caps, "stale.cap"), []byte(oldURI+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(caps, "stale.cap")); !os.IsNotExist(err) {
		t.Errorf("stale.cap after reload: %v, want it removed", err)
	}
	if _, err := os.Stat(filepath.Join(caps, "keep.cap")); err != nil {
		t.Errorf("keep.cap after reload: %v", err)
	}
}

func readCap(t *testing.T, path string) string {
	t.Helper()
	uri, err := vat.LoadCapFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return uri
}
