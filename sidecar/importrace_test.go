package sidecar

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// TestAddImportRacesWithListImports is issue 14's review finding: an
// import's endpoint (imported.in) was written without a lock while
// ListImports read it. Under -race, imports added (and removed) from
// several goroutines while others list them must not trip the detector,
// and every listed import has its endpoint.
func TestAddImportRacesWithListImports(t *testing.T) {
	s := startTestSidecar(t, Config{})
	const adders, each = 4, 10
	var wg sync.WaitGroup
	done := make(chan struct{})
	for range 2 {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				for _, st := range s.ListImports() {
					_ = st.Listen // read what AddImport writes
				}
			}
		})
	}
	var adding sync.WaitGroup
	for a := range adders {
		adding.Go(func() {
			for i := range each {
				name := fmt.Sprintf("imp%d-%d", a, i)
				if _, err := s.AddImport(context.Background(), Import{Name: name, URI: testURI}); err != nil {
					t.Errorf("AddImport %s: %v", name, err)
					return
				}
				if i%2 == 1 {
					if err := s.RemoveImport(name); err != nil {
						t.Errorf("RemoveImport %s: %v", name, err)
					}
				}
			}
		})
	}
	adding.Wait()
	close(done)
	wg.Wait()
	list := s.ListImports()
	if len(list) != adders*each/2 {
		t.Errorf("%d imports listed, want %d", len(list), adders*each/2)
	}
	for _, st := range list {
		if st.Listen == "" {
			t.Errorf("import %s listed without its endpoint", st.Name)
		}
	}
}

// TestImportRemovedWhileStarting: an import removed while AddImport was
// still opening its endpoint (after the import was listed, before its
// endpoint was recorded) left that endpoint serving, with no import to
// stop it, until the process ended. Its fixed port tells: every removed
// import must have let it go, so the next AddImport on it can listen.
// Meanwhile Addresses and Shutdown's list of endpoints read them too
// (-race).
func TestImportRemovedWhileStarting(t *testing.T) {
	s := startTestSidecar(t, Config{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	raced := 0
	for i := range 100 {
		added := make(chan error, 1)
		go func() {
			_, err := s.AddImport(context.Background(), Import{Name: "x", URI: testURI, Listen: addr})
			added <- err
		}()
		for s.RemoveImport("x") != nil { // poll: remove it as soon as it is listed
			_ = s.Addresses()
			runtime.Gosched()
		}
		err := <-added
		switch {
		case err == nil:
		case errors.Is(err, ErrNotFound):
			raced++
		default:
			t.Fatalf("round %d: AddImport: %v", i, err)
		}
		if err := s.RemoveImport("x"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("round %d: import still listed after its removal (RemoveImport: %v)", i, err)
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("round %d: the removed import's endpoint still holds %s: %v", i, addr, err)
		}
		l.Close()
	}
	t.Logf("%d of 100 imports removed while their endpoint started", raced)
}

// TestExportRemovedWhileStarting: an export is listed before its backend
// client and table entry exist. A RemoveExport in between found no client
// to close and no entry to take out; the export then came up: its id
// restorable, its client open, its gauge counted down before it was
// counted up. Adds and removes of one name now take turns: at the end no
// entry is left in the table and the exports gauge reads 0.
func TestExportRemovedWhileStarting(t *testing.T) {
	dir := t.TempDir()
	s := startTestSidecar(t, Config{Listen: "tcp:127.0.0.1:0", SecretKeyFile: filepath.Join(dir, "k.pem"), CapDir: dir})
	entries := s.table.Len()
	for i := range 100 {
		added := make(chan error, 1)
		go func() {
			_, err := s.AddExport(context.Background(), Export{Name: "x", Target: "127.0.0.1:1"})
			added <- err
		}()
		// Poll: remove it as soon as it is listed; an AddExport that
		// failed ends the round too.
		for s.RemoveExport("x") != nil && len(added) == 0 {
			runtime.Gosched()
		}
		if err := <-added; err != nil {
			t.Fatalf("round %d: AddExport: %v", i, err)
		}
		// The poll may have ended as the export was added, before it
		// could remove it.
		if err := s.RemoveExport("x"); err != nil && !errors.Is(err, ErrNotFound) {
			t.Fatalf("round %d: RemoveExport: %v", i, err)
		}
		if err := s.RemoveExport("x"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("round %d: export still listed after its removal (RemoveExport: %v)", i, err)
		}
		if n := s.table.Len(); n != entries {
			t.Fatalf("round %d: %d table entries after the export's removal, want %d", i, n, entries)
		}
	}
	if g := gaugeValue(t, s.metrics.exports); g != 0 {
		t.Errorf("exports gauge %v after every export was removed, want 0", g)
	}
}

// gaugeValue reads g.
func gaugeValue(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}
