package vat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"

	"github.com/vatcar/vatcar/proto/captp"
	"github.com/vatcar/vatcar/vat/engine"
)

// newEngineConn runs vatcar's own engine on endpoint for c: the codec is
// the same write-behind codec as go-capnp's transport gets, a Bootstrap
// without an object id gets boot (the Restorer), one with an object id
// restores it as the Restorer would (OCaml's way).
func (v *Vat) newEngineConn(c *Connection, endpoint net.Conn, mode Mode, boot capnp.Client, log *slog.Logger) *engine.Conn {
	stalled := func() {
		log.Warn("closing the connection: the peer read nothing while messages waited for it", "for", v.cfg.writeStallTimeout())
		if v.cfg.OnRefused != nil {
			v.cfg.OnRefused(RefusedSendQueue)
		}
	}
	rw := newStallConn(activityConn{Conn: endpoint, act: c.act}, v.cfg.writeStallTimeout(), stalled)
	cd := newCodec(rw, v.cfg.maxMessageSize())
	cd.lazyReturn = v.cfg.LazyReturn
	var codec engine.Codec = cd
	if v.cfg.Insecure && mode == Accept {
		codec = &firstMessageCodec{Codec: cd, conn: endpoint} // see handshake
	}
	return engine.NewConn(codec, &engine.Options{
		Bootstrap: boot,
		Restore: func(ctx context.Context, id []byte) (capnp.Client, error) {
			if !c.limit.acquire() { // the restore counts as a call while it runs
				return capnp.Client{}, exc.New(exc.Overloaded, "", ErrOverloaded.Error())
			}
			defer c.limit.release()
			return v.restoreForPeer(ctx, c, ServiceID(id))
		},
		NoRestorer:  noRestorerText,
		BaseContext: v.ctx,
		Logger:      log,
		MaxAnswers:  engineMaxAnswers(v.cfg.maxAnswers()),
		MaxRestores: maxRestores(v.cfg.maxConcurrentCalls()),
		OnLimit:     v.onEngineLimit,
	})
}

// restoreByObjectID restores id OCaml's way: a Bootstrap whose
// deprecatedObjectId is the id. An older vatcar peer (on go-capnp) ignores
// the id and answers with its Restorer, so Restorer.restore(id) is
// pipelined on the answer in the same flight: if it returns a capability,
// the peer was an older vatcar and that capability is the service; if it
// fails as Unimplemented, the bootstrap answer is the service itself (a
// vatcar engine, OCaml or C++ peer); any other failure is the restore's.
func (c *Connection) restoreByObjectID(ctx context.Context, id ServiceID) (capnp.Client, error) {
	boot := c.eng.BootstrapID(ctx, id)
	fut, release := captp.Restorer(boot).Restore(ctx, func(p captp.Restorer_restore_Params) error {
		return p.SetId(id)
	})
	defer release()
	res, err := fut.Struct()
	if err == nil {
		boot.Release()
		c.restored.Store(true) // in use, this way: not an idle stranger
		return res.Cap().AddRef(), nil
	}
	if exc.TypeOf(err) == exc.Unimplemented {
		if rerr := boot.Resolve(ctx); rerr != nil {
			boot.Release()
			return capnp.Client{}, rerr
		}
		c.restored.Store(true)
		return boot, nil
	}
	boot.Release()
	if !c.usable() && !IsDisconnected(err) && !IsUnknownService(err) && !IsNoRestorer(err) {
		err = fmt.Errorf("%w: %w", ErrDisconnected, err)
	}
	return capnp.Client{}, err
}

// firstMessageCodec clears the read deadline that bounds the wait for a
// peer's first message once that message has arrived.
type firstMessageCodec struct {
	engine.Codec
	conn net.Conn
	once sync.Once
}

func (c *firstMessageCodec) Decode() (*capnp.Message, error) {
	m, err := c.Codec.Decode()
	var tooLarge *engine.MessageTooLarge
	if err == nil || errors.As(err, &tooLarge) { // a message came: the engine answers an oversize one
		c.once.Do(func() { _ = c.conn.SetReadDeadline(time.Time{}) })
	}
	return m, err
}

// engineMaxAnswers is Config.MaxAnswers for the engine (the vat's 0, no
// bound, is the engine's negative).
func engineMaxAnswers(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

// onEngineLimit reports a limit the engine met: a connection closed for
// its answer budget or a protocol violation to OnRefused (the engine
// logged it), a call or question refused to OnLimit.
func (v *Vat) onEngineLimit(reason string) {
	switch reason {
	case engine.LimitAnswersHeld:
		if v.cfg.OnRefused != nil {
			v.cfg.OnRefused(RefusedAnswerBudget)
		}
		return
	case engine.ClosedProtocolViolation:
		if v.cfg.OnRefused != nil {
			v.cfg.OnRefused(RefusedProtocol)
		}
		return
	}
	if v.cfg.OnLimit != nil {
		v.cfg.OnLimit(reason)
	}
}

// maxRestores is the engine's Options.MaxRestores for a limit on calls:
// twice it (negative: none, as for calls). The restores running are
// already held to the limit by the Restore hook's slot; the engine's bound
// counts a restore until its Return is queued, so that a client restoring
// again as soon as it has a reply is not refused while the previous
// restore's Return is still being queued.
func maxRestores(calls int) int {
	if calls < 0 {
		return -1
	}
	return 2 * calls
}
