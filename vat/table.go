package vat

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

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
	policy atomic.Pointer[Policy] // nil: DefaultClockSkew, nothing revoked

	mu      sync.Mutex
	entries map[[sha256.Size]byte]*entry
	loads   map[[sha256.Size]byte]*load
}

type entry struct {
	id      ServiceID    // the root of narrowed refs
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
	t.entries[h] = &entry{id: append(ServiceID(nil), id...), cap: cap, proxies: make(map[*forwarder]struct{})}
	t.mu.Unlock()
	old.revoke(proxies)
}

// DefaultClockSkew is how far past its expiry (or before its not-before) a
// narrowed ref still works, for clocks that disagree.
const DefaultClockSkew = 30 * time.Second

// Policy is how a Table treats narrowed refs. The zero Policy means
// DefaultClockSkew and nothing revoked.
type Policy struct {
	// Revoked, if not nil, reports whether a revocation id is revoked: a
	// ref whose chain holds one is unknown (ErrUnknownService).
	Revoked func(RevocationID) bool
	// ClockSkew is the allowance on expiry and not-before; zero means
	// DefaultClockSkew, negative none.
	ClockSkew time.Duration
	// Now, if not nil, is the clock (tests).
	Now func() time.Time
}

// SetPolicy sets how later restores treat narrowed refs.
func (t *Table) SetPolicy(p Policy) { t.policy.Store(&p) }

func (t *Table) currentPolicy() Policy {
	p := Policy{}
	if cur := t.policy.Load(); cur != nil {
		p = *cur
	}
	switch {
	case p.ClockSkew == 0:
		p.ClockSkew = DefaultClockSkew
	case p.ClockSkew < 0:
		p.ClockSkew = 0
	}
	if p.Now == nil {
		p.Now = time.Now
	}
	return p
}

// RevokeRef breaks every live capability restored through a ref whose chain
// holds r (a narrowed ref and all refs narrowed from it), and reports how
// many. Later restores of those refs are refused by Policy.Revoked.
func (t *Table) RevokeRef(r RevocationID) int {
	t.mu.Lock()
	var hit []*forwarder
	for _, e := range t.entries {
		for f := range e.proxies {
			if f.grant.revokedBy(r) {
				hit = append(hit, f)
			}
		}
	}
	t.mu.Unlock()
	for _, f := range hit {
		f.revoke(ErrRevoked)
	}
	return len(hit)
}

// restoreToken restores a narrowed ref: its root must be in the table, its
// chain must verify, no prefix may be revoked (else ErrUnknownService,
// exactly as for an unknown id), and its restore-time caveats (peer,
// expiry) must hold (else a *CaveatError).
func (t *Table) restoreToken(ctx context.Context, tok *Token) (capnp.Client, error) {
	t.mu.Lock()
	e := t.entries[tok.Locator]
	var root ServiceID
	if e != nil {
		root = e.id
	}
	t.mu.Unlock()
	if e == nil {
		return capnp.Client{}, ErrUnknownService
	}
	revs, ok := tok.Verify(root)
	if !ok {
		return capnp.Client{}, ErrUnknownService
	}
	p := t.currentPolicy()
	if p.Revoked != nil && slices.ContainsFunc(revs, p.Revoked) {
		return capnp.Client{}, ErrUnknownService
	}
	g := &Grant{Ref: revs[len(revs)-1], Chain: revs, Caveats: Caveats{Blocks: tok.Blocks, Skew: p.ClockSkew}}
	g.setPeer(ctx)
	if err := g.Caveats.CheckPeer(g.Peer); err != nil {
		return capnp.Client{}, err
	}
	if err := g.Caveats.CheckTime(p.Now()); err != nil {
		return capnp.Client{}, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.entries[tok.Locator] != e {
		return capnp.Client{}, ErrUnknownService // removed meanwhile
	}
	return t.proxyLocked(tok.Locator, e, g), nil
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
			rev := id.RevocationID()
			g := &Grant{Ref: rev, Chain: []RevocationID{rev}}
			g.setPeer(ctx)
			c := t.proxyLocked(h, e, g)
			t.mu.Unlock()
			return c, nil
		}
		if tok, err := ParseToken(id); err == nil {
			t.mu.Unlock()
			return t.restoreToken(ctx, tok)
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
			t.entries[h] = &entry{id: append(ServiceID(nil), id...), cap: c, loaded: true, proxies: make(map[*forwarder]struct{})}
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
func (t *Table) proxyLocked(h [sha256.Size]byte, e *entry, g *Grant) capnp.Client {
	var f *forwarder
	f, c := newForwarder(e.cap.AddRef(), nil, func() { t.dropProxy(h, e, f) })
	f.grant = g
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
