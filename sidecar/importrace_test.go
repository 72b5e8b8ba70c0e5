package sidecar

import (
	"context"
	"fmt"
	"sync"
	"testing"
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
