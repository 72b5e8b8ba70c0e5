package sidecar

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestReloadHalfFailingChangesNothing checks that a reload whose changes
// cannot all be made (here an import whose port is taken, or whose cap file
// is missing) removes, adds and replaces nothing, and says so.
func TestReloadHalfFailingChangesNothing(t *testing.T) {
	backend := startTestBackend(t)
	dir := t.TempDir()
	exporter := startTestSidecar(t, Config{
		Listen: "tcp:127.0.0.1:0", CapDir: dir,
		Exports: []Export{{Name: "test", Target: backend}},
	})
	_ = exporter
	uri := "@" + filepath.Join(dir, "test.cap")
	cfg := Config{
		Listen: "tcp:127.0.0.1:0", CapDir: t.TempDir(),
		Exports: []Export{{Name: "old", Target: backend}},
		Imports: []Import{{Name: "kept", URI: uri}, {Name: "dropped", URI: uri}},
	}
	s := startTestSidecar(t, cfg)
	exportsBefore := names(s.ListExports(), func(e ExportStatus) string { return e.Name })
	importsBefore := names(s.ListImports(), func(i ImportStatus) string { return i.Name + "@" + i.Listen })

	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for _, tc := range []struct {
		name    string
		imports []Import
		want    string
	}{
		{"port taken", []Import{{Name: "kept", URI: uri}, {Name: "new", URI: uri, Listen: taken.Addr().String()}}, taken.Addr().String()},
		{"cap file missing", []Import{{Name: "kept", URI: uri}, {Name: "new", URI: "@" + filepath.Join(dir, "none.cap")}}, "none.cap"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next := cfg
			// Applied in order these would drop export old and import
			// dropped and add export new before failing on import new.
			next.Exports = []Export{{Name: "new", Target: backend}}
			next.Imports = tc.imports
			err := s.Reload(next)
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "nothing changed") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Reload = %v, want ErrConfig saying nothing changed and naming %s", err, tc.want)
			}
			if got := names(s.ListExports(), func(e ExportStatus) string { return e.Name }); !slices.Equal(got, exportsBefore) {
				t.Errorf("exports after the refused reload = %v, want %v", got, exportsBefore)
			}
			if got := names(s.ListImports(), func(i ImportStatus) string { return i.Name + "@" + i.Listen }); !slices.Equal(got, importsBefore) {
				t.Errorf("imports after the refused reload = %v, want %v", got, importsBefore)
			}
			if _, err := os.Stat(filepath.Join(cfg.CapDir, "new.cap")); !os.IsNotExist(err) {
				t.Errorf("new.cap after the refused reload: %v, want none", err)
			}
		})
	}
	// The same reload with a free port applies.
	next := cfg
	next.Exports = []Export{{Name: "new", Target: backend}}
	next.Imports = []Import{{Name: "kept", URI: uri}, {Name: "new", URI: uri}}
	if err := s.Reload(next); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if got := names(s.ListExports(), func(e ExportStatus) string { return e.Name }); !slices.Equal(got, []string{"new"}) {
		t.Errorf("exports after the reload = %v, want [new]", got)
	}
}

// names returns key of each item, sorted.
func names[T any](items []T, key func(T) string) []string {
	var out []string
	for _, it := range items {
		out = append(out, key(it))
	}
	slices.Sort(out)
	return out
}

// TestAddImportRefusesEmptyServiceID checks that the admin API refuses a
// URI that names a vat and no service, as bad input.
func TestAddImportRefusesEmptyServiceID(t *testing.T) {
	s := startTestSidecar(t, Config{})
	uri := testURI[:strings.LastIndex(testURI, "/")]
	for _, u := range []string{uri, uri + "/"} {
		_, err := s.AddImport(context.Background(), Import{Name: "x", URI: u})
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "Missing service id") {
			t.Errorf("AddImport(%q) = %v, want ErrConfig saying the service id is missing", u, err)
		}
	}
	if got := len(s.ListImports()); got != 0 {
		t.Errorf("%d imports after refused AddImports, want 0", got)
	}
}
