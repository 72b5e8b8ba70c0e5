package vat

import (
	"sync"

	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// ConnStats counts what is outstanding on one connection, as seen in the
// messages that cross it (go-capnp keeps its own tables private).
type ConnStats struct {
	// Questions is calls this vat sent that have no return yet.
	Questions int
	// Answers is calls the peer sent that this vat has not returned yet.
	Answers int
	// Imports is the peer's capabilities this vat holds references to.
	Imports int
	// Exports is this vat's capabilities the peer holds references to.
	Exports int
}

// wireStats watches a transport's messages to keep a ConnStats.
//
// Locking: mu guards every field; it is held only while updating counts.
type wireStats struct {
	mu        sync.Mutex
	questions int
	answers   int
	imports   map[uint32]uint32 // import id -> references held
	exports   map[uint32]uint32 // export id -> references given
}

func newWireStats() *wireStats {
	return &wireStats{imports: make(map[uint32]uint32), exports: make(map[uint32]uint32)}
}

func (w *wireStats) snapshot() ConnStats {
	w.mu.Lock()
	defer w.mu.Unlock()
	return ConnStats{Questions: max(w.questions, 0), Answers: max(w.answers, 0), Imports: len(w.imports), Exports: len(w.exports)}
}

// observe accounts for one message; out says whether this vat sent it.
func (w *wireStats) observe(m rpccp.Message, out bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	// Descriptors this side sends are exports; those it receives, imports.
	caps, releases := w.exports, w.imports
	if !out {
		caps, releases = w.imports, w.exports
	}
	switch m.Which() {
	case rpccp.Message_Which_call, rpccp.Message_Which_bootstrap:
		if out {
			w.questions++
		} else {
			w.answers++
		}
		if m.Which() != rpccp.Message_Which_call {
			return
		}
		if call, err := m.Call(); err == nil {
			if p, err := call.Params(); err == nil {
				countCaps(p, caps)
			}
		}
	case rpccp.Message_Which_return:
		if out {
			w.answers--
		} else {
			w.questions--
		}
		if ret, err := m.Return(); err == nil && ret.Which() == rpccp.Return_Which_results {
			if p, err := ret.Results(); err == nil {
				countCaps(p, caps)
			}
		}
	case rpccp.Message_Which_resolve:
		if res, err := m.Resolve(); err == nil && res.Which() == rpccp.Resolve_Which_cap {
			if d, err := res.Cap(); err == nil {
				countCap(d, caps)
			}
		}
	case rpccp.Message_Which_release:
		// A release sent drops imports; one received drops exports.
		rel, err := m.Release()
		if err != nil {
			return
		}
		id, n := rel.Id(), rel.ReferenceCount()
		if releases[id] <= n {
			delete(releases, id)
		} else {
			releases[id] -= n
		}
	}
}

func countCaps(p rpccp.Payload, caps map[uint32]uint32) {
	list, err := p.CapTable()
	if err != nil {
		return
	}
	for i := 0; i < list.Len(); i++ {
		countCap(list.At(i), caps)
	}
}

func countCap(d rpccp.CapDescriptor, caps map[uint32]uint32) {
	switch d.Which() {
	case rpccp.CapDescriptor_Which_senderHosted:
		caps[d.SenderHosted()]++
	case rpccp.CapDescriptor_Which_senderPromise:
		caps[d.SenderPromise()]++
	}
}
