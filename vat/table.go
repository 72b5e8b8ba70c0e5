package vat

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"

	capnp "capnproto.org/go/capnp/v3"
)

// Loader makes the capability for a service id the Table does not hold:
// services that live in a database rather than in memory. It returns
// ErrUnknownService for ids it does not know.
type Loader interface {
	Load(ctx context.Context, id ServiceID) (capnp.Client, error)
}

// LoaderFunc adapts a function to the Loader interface.
type LoaderFunc func(ctx context.Context, id ServiceID) (capnp.Client, error)

// Load calls f(ctx, id).
func (f LoaderFunc) Load(ctx context.Context, id ServiceID) (capnp.Client, error) { return f(ctx, id) }

// Table is a Restorer holding services by id. Every capability it restores
// is a revocable proxy: Remove(id) breaks all the live capabilities restored
// for id. Ids are looked up by their SHA-256, so lookups take no time that
// depends on the secret. Table is safe for concurrent use.
//
// With a Loader, a restore of an id not in the table loads it: concurrent
// restores of one id share one load, a failed load is not remembered, and a
// loaded capability stays cached while some restored reference to it lives.
//
// Locking: mu guards entries and loads; it is not held while loading,
// calling a capability, or releasing one.
type Table struct {
	loader Loader

	mu      sync.Mutex
	entries map[[sha256.Size]byte]*entry
	loads   map[[sha256.Size]byte]*load
}

type entry struct {
	cap     capnp.Client // owned by the table
	loaded  bool         // made by the loader: dropped when unused
	proxies map[*forwarder]struct{}
}

type load struct {
	done chan struct{}
	err  error
}

// NewTable returns an empty table. loader may be nil: then unknown ids fail
// with ErrUnknownService.
func NewTable(loader Loader) *Table {
	return &Table{
		loader:  loader,
		entries: make(map[[sha256.Size]byte]*entry),
		loads:   make(map[[sha256.Size]byte]*load),
	}
}

// Add makes cap available as service id, taking over the reference. An
// existing service with that id is removed first (and its restored
// capabilities revoked).
func (t *Table) Add(id ServiceID, cap capnp.Client) {
	h := id.hash()
	t.mu.Lock()
	old := t.entries[h]
	proxies := old.proxyList()
	t.entries[h] = &entry{cap: cap, proxies: make(map[*forwarder]struct{})}
	t.mu.Unlock()
	old.revoke(proxies)
}

// Remove withdraws service id: later restores fail with ErrUnknownService
// (unless a Loader loads it again) and capabilities already restored for it
// fail with ErrRevoked. It reports whether id was present.
func (t *Table) Remove(id ServiceID) bool {
	h := id.hash()
	t.mu.Lock()
	e := t.entries[h]
	proxies := e.proxyList()
	delete(t.entries, h)
	t.mu.Unlock()
	e.revoke(proxies)
	return e != nil
}

// Len returns the number of services in the table.
func (t *Table) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.entries)
}

// Restore returns a new revocable reference to service id.
func (t *Table) Restore(ctx context.Context, id ServiceID) (capnp.Client, error) {
	h := id.hash()
	for {
		t.mu.Lock()
		if e := t.entries[h]; e != nil {
			c := t.proxyLocked(h, e)
			t.mu.Unlock()
			return c, nil
		}
		if t.loader == nil {
			t.mu.Unlock()
			return capnp.Client{}, ErrUnknownService
		}
		l := t.loads[h]
		if l == nil {
			l = &load{done: make(chan struct{})}
			t.loads[h] = l
			t.mu.Unlock()
			t.load(ctx, h, id, l)
		} else {
			t.mu.Unlock()
		}
		select {
		case <-l.done:
		case <-ctx.Done():
			return capnp.Client{}, fmt.Errorf("restore %v: %w", id, ctx.Err())
		}
		if l.err != nil {
			if (errors.Is(l.err, context.Canceled) || errors.Is(l.err, context.DeadlineExceeded)) && ctx.Err() == nil {
				continue // the loading caller gave up, not us: load again
			}
			return capnp.Client{}, l.err
		}
		// Loaded: the entry is in the table now (unless already removed).
	}
}

// Resolve is Restore, under the seed's name.
func (t *Table) Resolve(ctx context.Context, id ServiceID) (capnp.Client, error) {
	return t.Restore(ctx, id)
}

func (t *Table) load(ctx context.Context, h [sha256.Size]byte, id ServiceID, l *load) {
	c, err := t.loader.Load(ctx, id)
	if err == nil && !c.IsValid() {
		err = ErrUnknownService
	}
	t.mu.Lock()
	delete(t.loads, h)
	if err == nil {
		if t.entries[h] == nil {
			t.entries[h] = &entry{cap: c, loaded: true, proxies: make(map[*forwarder]struct{})}
			c = capnp.Client{}
		}
	} else {
		l.err = err
	}
	t.mu.Unlock()
	c.Release() // someone Added the id meanwhile: theirs wins
	close(l.done)
}

// proxyLocked returns a new revocable proxy for e. t.mu is held.
func (t *Table) proxyLocked(h [sha256.Size]byte, e *entry) capnp.Client {
	var f *forwarder
	f, c := newForwarder(e.cap.AddRef(), nil, func() { t.dropProxy(h, e, f) })
	e.proxies[f] = struct{}{}
	return c
}

// dropProxy forgets a released proxy, and a loaded entry nobody uses.
func (t *Table) dropProxy(h [sha256.Size]byte, e *entry, f *forwarder) {
	var unused capnp.Client
	t.mu.Lock()
	delete(e.proxies, f)
	if e.loaded && len(e.proxies) == 0 && t.entries[h] == e {
		delete(t.entries, h)
		unused = e.cap
	}
	t.mu.Unlock()
	unused.Release()
}

// proxyList returns e's proxies (none for a nil e). The table's lock is
// held.
func (e *entry) proxyList() []*forwarder {
	if e == nil {
		return nil
	}
	proxies := make([]*forwarder, 0, len(e.proxies))
	for f := range e.proxies {
		proxies = append(proxies, f)
	}
	return proxies
}

// revoke breaks proxies, e's proxies taken with proxyList when e left the
// table, and releases e's capability. The table's lock is not held.
func (e *entry) revoke(proxies []*forwarder) {
	if e == nil {
		return
	}
	for _, f := range proxies {
		f.revoke(ErrRevoked)
	}
	e.cap.Release()
}

// Close removes every service from the table, revoking what was restored
// from it, and releases the capabilities. Later restores fail (or load
// again, with a Loader).
func (t *Table) Close() {
	t.mu.Lock()
	entries := t.entries
	t.entries = make(map[[sha256.Size]byte]*entry)
	proxies := make(map[*entry][]*forwarder, len(entries))
	for _, e := range entries {
		proxies[e] = e.proxyList()
	}
	t.mu.Unlock()
	for e, ps := range proxies {
		e.revoke(ps)
	}
}
