package vat

import (
	"context"
	"errors"
	"fmt"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
)

// SturdyRef is a persistent reference to a service hosted by some vat: the
// vat's location and identity plus the service id. It is imported into (or
// made by) a particular Vat, which it uses to connect. A SturdyRef is
// immutable and safe for concurrent use; it is a bearer secret.
type SturdyRef struct {
	vat *Vat
	loc Locator
	id  ServiceID
}

// Locator returns where the service's vat is and its key digest.
func (r *SturdyRef) Locator() Locator { return r.loc }

// ID returns the service id (secret).
func (r *SturdyRef) ID() ServiceID { return append(ServiceID(nil), r.id...) }

// URI returns the ref as a capnp:// URI (secret).
func (r *SturdyRef) URI() string { return FormatURI(r.loc, r.id) }

// String returns a form fit for logs: the vat's digest and address and a
// short hash of the id, not the id itself.
func (r *SturdyRef) String() string {
	return fmt.Sprintf("%v@%v/%v", r.loc.Digest, r.loc.Address, r.id)
}

// IsLocal reports whether the ref names a service of its own vat, which
// Connect restores without any network.
func (r *SturdyRef) IsLocal() bool { return r.vat.isSelf(r.loc) }

// Connect returns a live capability for the service, which the caller
// releases. A ref to the vat itself is restored locally; otherwise the
// peer's cached connection is used, or one is made (concurrent Connects to
// one peer share one dial, and a connection that died is replaced by a new
// dial). It waits for the peer's answer, so an unknown id fails here with
// an error for which IsUnknownService is true; an unreachable peer or a key
// mismatch gives one for which IsDisconnected is true. ctx bounds the
// wait; the capability outlives it.
func (r *SturdyRef) Connect(ctx context.Context) (capnp.Client, error) {
	v := r.vat
	if r.IsLocal() {
		c, err := v.restoreLocal(ctx, r.id)
		if err != nil {
			return capnp.Client{}, fmt.Errorf("connect %v: %w", r, err)
		}
		return c, nil
	}
	for attempt := 0; ; attempt++ {
		conn, err := v.connection(ctx, r.loc, false)
		if err != nil {
			return capnp.Client{}, fmt.Errorf("connect %v: %w", r, err)
		}
		c, err := conn.restore(ctx, r.id)
		if err == nil {
			return c, nil
		}
		// The connection was ending (the peer went away, or it lost to a
		// crossed connection) when we picked it: wait it out and try once
		// more on a fresh one.
		if attempt == 0 && ctx.Err() == nil && v.awaitBroken(ctx, conn, err) {
			continue
		}
		return capnp.Client{}, fmt.Errorf("connect %v: %w", r, classify(err))
	}
}

// At returns a ref to the same service of the same vat (digest) at another
// address: one address of several that the ref's host name resolves to.
func (r *SturdyRef) At(a Address) *SturdyRef {
	return &SturdyRef{vat: r.vat, loc: Locator{Address: a, Digest: r.loc.Digest}, id: r.id}
}

// Dial is Connect through exactly the ref's address: it restores the
// service over the connection a dial to that address gave (or makes one),
// never over a connection to another process of the vat or locally, and
// returns that connection too, so the caller can watch it (Done). When the
// address turns out to be this very process (a replica dialling its own
// workload), the service is restored locally and the connection is nil.
func (r *SturdyRef) Dial(ctx context.Context) (capnp.Client, *Connection, error) {
	v := r.vat
	for attempt := 0; ; attempt++ {
		conn, err := v.connection(ctx, r.loc, true)
		if errors.Is(err, ErrSelfConnection) {
			c, err := v.restoreLocal(ctx, r.id)
			if err != nil {
				return capnp.Client{}, nil, fmt.Errorf("connect %v: %w", r, err)
			}
			return c, nil, nil
		}
		if err != nil {
			return capnp.Client{}, nil, fmt.Errorf("connect %v: %w", r, err)
		}
		c, err := conn.restore(ctx, r.id)
		if err == nil {
			return c, conn, nil
		}
		if attempt == 0 && ctx.Err() == nil && v.awaitBroken(ctx, conn, err) {
			continue
		}
		return capnp.Client{}, nil, fmt.Errorf("connect %v: %w", r, classify(err))
	}
}

// isSelf reports whether loc names this vat.
func (v *Vat) isSelf(loc Locator) bool {
	if !v.cfg.Insecure {
		return loc.Digest == v.key.Digest()
	}
	pub, ok := v.PublicAddress()
	return ok && loc.Digest.IsZero() && loc.Address == pub
}

// Import parses a capnp:// URI (or "@path" naming a cap file) into a
// SturdyRef of this vat. The error names what is wrong with the URI. A
// secure vat refuses insecure URIs and the other way round.
func (v *Vat) Import(uri string) (*SturdyRef, error) {
	uri, err := ReadURI(uri)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	loc, id, err := ParseURI(uri)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	if len(id) == 0 {
		return nil, fmt.Errorf("import %s: %w: Missing service id (the URI names a vat, not a service)", redact(uri), ErrInvalidURI)
	}
	if loc.Digest.IsZero() != v.cfg.Insecure {
		return nil, fmt.Errorf("import %s: %w", redact(uri), ErrInsecureMismatch)
	}
	return &SturdyRef{vat: v, loc: loc, id: id}, nil
}

// MustImport is Import that panics on error.
func (v *Vat) MustImport(uri string) *SturdyRef {
	r, err := v.Import(uri)
	if err != nil {
		panic(err)
	}
	return r
}

// SturdyRef returns a ref to service id hosted by this vat. It fails with
// ErrNoPublicAddress when the vat has no public address (or Listen has not
// yet bound the port of one with port 0).
func (v *Vat) SturdyRef(id ServiceID) (*SturdyRef, error) {
	pub, ok := v.PublicAddress()
	if !ok {
		return nil, fmt.Errorf("sturdy ref: %w", ErrNoPublicAddress)
	}
	return &SturdyRef{vat: v, loc: Locator{Address: pub, Digest: v.Digest()}, id: append(ServiceID(nil), id...)}, nil
}

// Export returns ref's URI, to be shown to or saved for another party.
func (v *Vat) Export(ref *SturdyRef) string { return ref.URI() }

// SturdyURI is SturdyRef(id) followed by Export.
func (v *Vat) SturdyURI(id ServiceID) (string, error) {
	r, err := v.SturdyRef(id)
	if err != nil {
		return "", err
	}
	return r.URI(), nil
}

// classify adds the matching sentinel to an error that came over the wire,
// so that errors.Is works on it.
func classify(err error) error {
	switch {
	case IsUnknownService(err) && !errors.Is(err, ErrUnknownService):
		return fmt.Errorf("%w (%w)", ErrUnknownService, err)
	case IsNoRestorer(err) && !errors.Is(err, ErrNoRestorer):
		return fmt.Errorf("%w (%w)", ErrNoRestorer, err)
	case IsDisconnected(err) && !errors.Is(err, ErrDisconnected):
		return fmt.Errorf("%w (%w)", ErrDisconnected, err)
	}
	return err
}

// connectionGrace is how long Connect waits for a connection to end after
// a restore on it failed with a Disconnected exception from the peer (an
// abort, or an exception relayed from further on).
const connectionGrace = time.Second

// awaitBroken reports, after a restore on conn failed with err, whether conn
// is ending, waiting for it to leave the cache if so. A connection this vat
// saw break is closed and waited out; after a Disconnected exception from
// the peer, conn is given connectionGrace to end (it does when the peer
// aborted) but is not closed, since the exception may come from a vat
// further on.
func (v *Vat) awaitBroken(ctx context.Context, conn *Connection, err error) bool {
	var grace <-chan time.Time
	switch {
	case !conn.usable() || brokeLocally(err):
		conn.closeBecause("broken: " + err.Error())
	case IsDisconnected(err):
		t := time.NewTimer(connectionGrace)
		defer t.Stop()
		grace = t.C
	default:
		return false
	}
	select {
	case <-conn.Done():
		return true
	case <-grace:
		return false
	case <-ctx.Done():
		return false
	}
}

// brokeLocally reports whether err says this vat's connection broke, as
// opposed to a Disconnected exception the peer sent back (say, from a vat
// further on), which leaves our connection sound. go-capnp builds received
// exceptions without a prefix and its own errors with one.
func brokeLocally(err error) bool {
	var ex *exc.Exception
	if errors.As(err, &ex) && ex.Prefix == "" {
		return false
	}
	return IsDisconnected(err)
}
