package vat

import (
	"context"
	"errors"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"

	"github.com/vatcar/vatcar/proto/captp"
)

// Restorer turns service ids into live capabilities: what a vat serves to
// peers that present a sturdy ref. Restore returns a new reference, which
// the caller releases; an unknown id fails with ErrUnknownService.
// Implementations must be safe for concurrent use.
type Restorer interface {
	Restore(ctx context.Context, id ServiceID) (capnp.Client, error)
}

// RestorerFunc adapts a function to the Restorer interface.
type RestorerFunc func(ctx context.Context, id ServiceID) (capnp.Client, error)

// Restore calls f(ctx, id).
func (f RestorerFunc) Restore(ctx context.Context, id ServiceID) (capnp.Client, error) {
	return f(ctx, id)
}

// bootstrap is the Restorer capability a vat serves on each connection. The
// capabilities it hands out count against the connection's call limit.
type bootstrap struct {
	vat  *Vat
	conn *Connection
}

func (b *bootstrap) Restore(ctx context.Context, call captp.Restorer_restore) error {
	call.Go() // restores may wait on a Loader; do not hold up the next call
	raw, err := call.Args().Id()
	if err != nil {
		return err
	}
	c, err := b.vat.restoreForPeer(ctx, b.conn, append(ServiceID(nil), raw...))
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		c.Release()
		return err
	}
	return res.SetCap(c)
}

// restoreForPeer restores id for the peer on conn, through the Restorer
// or OCaml's object-id Bootstrap: the capability (bound to the
// connection's call limit), or the exception the peer gets.
func (v *Vat) restoreForPeer(ctx context.Context, conn *Connection, id ServiceID) (capnp.Client, error) {
	if len(id) == 0 {
		// A peer's heartbeat (or a probe): answered without the restorer or
		// a log record, and counted.
		if v.cfg.OnRestore != nil {
			v.cfg.OnRestore(RestoreEmpty)
		}
		return capnp.Client{}, wireError(ErrUnknownService)
	}
	c, err := v.restoreLocal(withPeer(ctx, conn.key.digest), id)
	if v.cfg.OnRestore != nil {
		v.cfg.OnRestore(restoreResult(err))
	}
	if err != nil {
		v.log.Debug("restore failed", "id", id.String(), "err", err)
		return capnp.Client{}, wireError(err)
	}
	conn.restored.Store(true)
	return conn.limit.wrap(c), nil
}

// restoreLocal restores id with the vat's own restorer.
func (v *Vat) restoreLocal(ctx context.Context, id ServiceID) (capnp.Client, error) {
	if v.restorer == nil {
		return capnp.Client{}, ErrNoRestorer
	}
	if _, ok := PeerFromContext(ctx); !ok {
		ctx = withPeer(ctx, v.Digest()) // a restore of our own ref
	}
	c, err := v.restorer.Restore(ctx, id)
	if err != nil {
		return capnp.Client{}, err
	}
	if !c.IsValid() {
		return capnp.Client{}, ErrUnknownService
	}
	return c, nil
}

// wireError turns a restore error into the exception a peer receives: the
// seed's exact texts for unknown ids and missing restorers.
func wireError(err error) error {
	switch {
	case errors.Is(err, ErrUnknownService):
		return exc.New(exc.Failed, "", unknownServiceText)
	case errors.Is(err, ErrNoRestorer):
		return exc.New(exc.Failed, "", noRestorerText)
	}
	var ce *CaveatError
	if errors.As(err, &ce) {
		return exc.New(exc.Failed, "", ce.Error())
	}
	return err
}
