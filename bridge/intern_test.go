package bridge

import (
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"unsafe"

	"google.golang.org/grpc/metadata"
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

// TestCallerValues checks the caller metadata an egress keeps: the same
// caller's calls share it, also interleaved with other callers' as long
// as the cache holds it; another caller gets its own; an empty peer or ref
// gives no key.
func TestCallerValues(t *testing.T) {
	var e egress
	m1 := e.callerValues(Caller{Peer: "sha-256:a", Ref: "rev1:a"})
	m2 := e.callerValues(Caller{Peer: "sha-256:a", Ref: "rev1:a"})
	want := []string{MetadataPeer, "sha-256:a", MetadataRef, "rev1:a"}
	if !slices.Equal(m1.pairs, want) {
		t.Fatalf("pairs %q, want %q", m1.pairs, want)
	}
	if !reflect.DeepEqual(m1.md, metadata.Pairs(want...)) {
		t.Errorf("md %v, want the pairs", m1.md)
	}
	if m1 != m2 {
		t.Error("one caller's two calls got new metadata")
	}
	m3 := e.callerValues(Caller{Peer: "sha-256:b", Ref: "rev1:a"})
	if want := []string{MetadataPeer, "sha-256:b", MetadataRef, "rev1:a"}; !slices.Equal(m3.pairs, want) || m3.md[MetadataPeer][0] != "sha-256:b" {
		t.Errorf("another caller: %q %v", m3.pairs, m3.md)
	}
	if m := e.callerValues(Caller{Ref: "rev1:c"}); !slices.Equal(m.pairs, []string{MetadataRef, "rev1:c"}) || len(m.md) != 1 {
		t.Errorf("no peer: %q %v", m.pairs, m.md)
	}
	if m := e.callerValues(Caller{}); len(m.pairs) != 0 || m.md != nil {
		t.Errorf("no peer nor ref: %q %v, want none", m.pairs, m.md)
	}
	if !slices.Equal(m1.pairs, want) {
		t.Error("a stored value changed")
	}
	if m := e.callerValues(Caller{Peer: "sha-256:a", Ref: "rev1:a"}); m != m1 {
		t.Error("a caller's metadata was made again after another caller's call")
	}
	a, b := Caller{Peer: "sha-256:a", Ref: "rev1:a"}, Caller{Peer: "sha-256:b", Ref: "rev1:a"}
	if n := testing.AllocsPerRun(100, func() { e.callerValues(a); e.callerValues(b) }); n != 0 {
		t.Errorf("two callers' calls interleaved: %v allocations, want 0", n)
	}
	for i := range len(e.callers.recent) { // as many new callers as the cache holds
		e.callerValues(Caller{Peer: fmt.Sprintf("sha-256:%d", i)})
	}
	if m := e.callerValues(Caller{Peer: "sha-256:a", Ref: "rev1:a"}); m == m1 || !slices.Equal(m.pairs, want) {
		t.Errorf("a caller %d callers ago: %q, want its metadata made again", len(e.callers.recent), m.pairs)
	}
}
