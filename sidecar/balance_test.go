package sidecar

import (
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/vatcar/vatcar/vat"
)

func TestLookupHostsFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "hosts")
	table := "# replicas\n127.0.0.2 replicas.test other\n\n127.0.0.3\tREPLICAS.test # second\n::1 replicas.test\n127.0.0.9 elsewhere\n"
	if err := os.WriteFile(file, []byte(table), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		host string
		want []string
	}{
		{"replicas.test", []string{"127.0.0.2", "127.0.0.3", "::1"}},
		{"other", []string{"127.0.0.2"}},
		{"missing", nil},
	} {
		got, err := lookupHostsFile(file, tt.host)
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("lookupHostsFile(%q) = %v, %v; want %v", tt.host, got, err, tt.want)
		}
	}
	for _, bad := range []string{"not-an-ip replicas.test\n", "127.0.0.2\n"} {
		if err := os.WriteFile(file, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := lookupHostsFile(file, "replicas.test"); err == nil {
			t.Errorf("lookupHostsFile over %q: no error", bad)
		}
	}
	if _, err := lookupHostsFile(filepath.Join(t.TempDir(), "none"), "x"); err == nil {
		t.Error("lookupHostsFile of a missing file: no error")
	}
}

func TestIsName(t *testing.T) {
	for _, tt := range []struct {
		addr string
		want bool
	}{
		{"tcp:replicas.test:7000", true},
		{"tcp:127.0.0.2:7000", false},
		{"tcp:[::1]:7000", false},
		{"unix:/tmp/x.sock", false},
	} {
		a, err := vat.ParseAddress(tt.addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := isName(a); got != tt.want {
			t.Errorf("isName(%s) = %v, want %v", tt.addr, got, tt.want)
		}
	}
}

func TestPickPrefersTheLessLoaded(t *testing.T) {
	m := &imported{}
	if m.pickLocked() != nil {
		t.Fatal("pick with no backends")
	}
	idle, busy1, busy2, down := &backend{state: stateConnected}, &backend{state: stateConnected}, &backend{state: stateConnected}, &backend{state: stateUnavailable}
	busy1.outstanding.Store(5)
	busy2.outstanding.Store(5)
	m.backends = []*backend{down, busy1}
	if got := m.pickLocked(); got != busy1 {
		t.Fatal("one connected backend: not picked")
	}
	m.backends = []*backend{busy1, down, idle, busy2}
	counts := map[*backend]int{}
	const n = 3000
	for range n {
		counts[m.pickLocked()]++
	}
	if counts[down] != 0 {
		t.Errorf("a backend that is not connected got %d picks", counts[down])
	}
	// The idle one wins whenever it is one of the two drawn: 2/3 of picks.
	if got := counts[idle]; got < n/2 || got > n*5/6 {
		t.Errorf("idle backend picked %d of %d times, want about 2/3", got, n)
	}
}

// shutdownHook is a capnp.ClientHook that records its Shutdown: the
// release of the last reference to its client.
type shutdownHook struct {
	capnp.ClientHook
	shut atomic.Bool
}

func (h *shutdownHook) Shutdown()          { h.shut.Store(true) }
func (h *shutdownHook) Brand() capnp.Brand { return capnp.Brand{Value: h} }
func (h *shutdownHook) String() string     { return "shutdownHook" }

// TestHeldClientLentToCalls: a backend's capability lent to calls outlives
// the backend's own reference (a reconnect replaces it) until the last
// call gives it back, and is released exactly then.
func TestHeldClientLentToCalls(t *testing.T) {
	hook := &shutdownHook{}
	h := holdClient(capnp.NewClient(hook))
	h.hold()    // call 1
	h.hold()    // call 2
	h.release() // the backend moves on (setBackend)
	if hook.shut.Load() {
		t.Fatal("the capability was released while two calls borrowed it")
	}
	h.release() // call 1 ends
	if hook.shut.Load() {
		t.Fatal("the capability was released while a call borrowed it")
	}
	h.release() // call 2 ends
	if !hook.shut.Load() {
		t.Fatal("the capability was not released after its last borrower")
	}
	if holdClient(capnp.Client{}) != nil {
		t.Error("a null client was held")
	}
}
