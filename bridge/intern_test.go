package bridge

import (
	"fmt"
	"sync"
	"testing"
	"unsafe"
)

// TestInternKeepsOneCopy checks that a string read twice is the same copy,
// that the table stops growing at maxInterned (later strings are still
// returned, as copies of their own), and that concurrent readers and
// writers agree (run with -race).
func TestInternKeepsOneCopy(t *testing.T) {
	var tab intern
	a := tab.get([]byte("/pkg.Svc/Method"))
	b := tab.get([]byte("/pkg.Svc/Method"))
	if a != "/pkg.Svc/Method" || unsafe.StringData(a) != unsafe.StringData(b) {
		t.Fatalf("two reads of one name: %q and %q are not one copy", a, b)
	}
	for i := range maxInterned + 10 {
		if got, want := tab.get([]byte(fmt.Sprint("m", i))), fmt.Sprint("m", i); got != want {
			t.Fatalf("get = %q, want %q", got, want)
		}
	}
	if n := len(*tab.names.Load()); n != maxInterned {
		t.Fatalf("table holds %d strings, want the bound %d", n, maxInterned)
	}
	var small intern
	long := string(make([]byte, maxInternLen+1))
	if got := small.get([]byte(long)); got != long || small.names.Load() != nil {
		t.Fatalf("a %d-byte string was kept (or changed): the table holds names of at most %d bytes", len(long), maxInternLen)
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 200 {
				name := fmt.Sprint("/c.S/", (g+i)%50)
				if got := methodNames.get([]byte(name)); got != name {
					t.Errorf("get = %q, want %q", got, name)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestHeaderKeyLowercase checks that uppercase keys are lowercased and
// lowercase ones interned.
func TestHeaderKeyLowercase(t *testing.T) {
	if got := headerKey([]byte("X-Trace-ID")); got != "x-trace-id" {
		t.Errorf("headerKey(X-Trace-ID) = %q", got)
	}
	a, b := headerKey([]byte("x-request-id")), headerKey([]byte("x-request-id"))
	if a != "x-request-id" || unsafe.StringData(a) != unsafe.StringData(b) {
		t.Errorf("x-request-id read twice: %q, %q not one copy", a, b)
	}
}

// TestCallerValues checks the caller metadata values an egress keeps: the
// same caller's calls share them, another caller gets its own, and an
// empty peer or ref gives none.
func TestCallerValues(t *testing.T) {
	var e egress
	p1, r1 := e.callerValues(Caller{Peer: "sha-256:a", Ref: "rev1:a"})
	p2, r2 := e.callerValues(Caller{Peer: "sha-256:a", Ref: "rev1:a"})
	if len(p1) != 1 || p1[0] != "sha-256:a" || len(r1) != 1 || r1[0] != "rev1:a" {
		t.Fatalf("values %v %v", p1, r1)
	}
	if &p1[0] != &p2[0] || &r1[0] != &r2[0] {
		t.Error("one caller's two calls got new values")
	}
	p3, r3 := e.callerValues(Caller{Peer: "sha-256:b", Ref: "rev1:a"})
	if len(p3) != 1 || p3[0] != "sha-256:b" || r3[0] != "rev1:a" {
		t.Errorf("another caller: %v %v", p3, r3)
	}
	if p, r := e.callerValues(Caller{Ref: "rev1:c"}); p != nil || len(r) != 1 || r[0] != "rev1:c" {
		t.Errorf("no peer: %v %v", p, r)
	}
	if p1[0] != "sha-256:a" {
		t.Error("a stored value changed")
	}
}
