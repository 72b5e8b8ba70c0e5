package bridge

import (
	"sync"
	"sync/atomic"
)

// intern keeps one copy of strings that recur from call to call (method
// names, metadata keys), so that decoding them from a capnp message does
// not allocate each time: a lookup by bytes allocates nothing. The table is
// a map replaced whole on insert (copy on write): readers take no lock. It
// holds at most maxInterned strings of at most maxInternLen bytes; others
// are allocated as usual, so a peer sending ever new or huge names (a call
// refused later still has its method read) cannot make it hold more than
// maxInterned x maxInternLen bytes.
type intern struct {
	names atomic.Pointer[map[string]string]
	mu    sync.Mutex // serializes inserts
}

// maxInterned and maxInternLen bound each table.
const (
	maxInterned  = 1024
	maxInternLen = 128
)

var (
	methodNames  intern // CallHead methods, at the egress
	metadataKeys intern // lowercase metadata keys read from capnp
)

// get returns b as a string, from the table when it is there.
func (t *intern) get(b []byte) string {
	if m := t.names.Load(); m != nil {
		if s, ok := (*m)[string(b)]; ok { // no allocation for the lookup
			return s
		}
	}
	s := string(b)
	if len(s) > maxInternLen {
		return s
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var old map[string]string
	if m := t.names.Load(); m != nil {
		old = *m
	}
	if v, ok := old[s]; ok {
		return v
	}
	if len(old) >= maxInterned {
		return s
	}
	next := make(map[string]string, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[s] = s
	t.names.Store(&next)
	return s
}
