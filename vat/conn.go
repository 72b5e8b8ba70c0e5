package vat

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/vatcar/vatcar/internal/rawconn"
	"github.com/vatcar/vatcar/proto/captp"
	"github.com/vatcar/vatcar/vat/engine"
)

// Mode says which side made a connection: the crossed-connection rule
// needs it.
type Mode int

const (
	// Accept is a connection the peer initiated.
	Accept Mode = iota
	// Connect is a connection this vat initiated.
	Connect
)

func (m Mode) String() string {
	if m == Connect {
		return "connect"
	}
	return "accept"
}

// peerKey identifies a peer process in the connection cache: its digest and
// instance, or for an insecure peer dialled by this vat, its address.
type peerKey struct {
	digest   Digest
	instance Instance
	addr     string
}

// dialKey names a dial target: the peer's digest (zero if insecure) and the
// address dialled. Dials to one target share one attempt, and the
// connection a dial gave stays the target's until it ends.
type dialKey struct {
	digest Digest
	addr   string
}

// Connection is one CapTP connection to a peer vat. It is safe for
// concurrent use.
type Connection struct {
	vat    *Vat
	key    peerKey
	mode   Mode
	remote string
	conn   capConn
	eng    *engine.Conn // conn, when it runs on vatcar's engine
	limit  *limiter
	act    *activity // when bytes last arrived, for the heartbeat
	log    *slog.Logger

	bootOnce sync.Once
	boot     capnp.Client // the peer's Restorer; see restorer()

	restored atomic.Bool // a restore succeeded, either way: in use (see inbound.victimLocked)

	closing atomic.Bool            // set when Close starts or the engine's connection ends
	done    chan struct{}          // closed after removal from the vat's cache
	reason  atomic.Pointer[string] // why this vat closed it, if it did
}

// capConn is what a Connection needs of a CapTP implementation: vatcar's
// *engine.Conn, or in tests go-capnp's *rpc.Conn (see newGoCapnpConn).
type capConn interface {
	Bootstrap(ctx context.Context) capnp.Client
	Close() error
	Done() <-chan struct{}
}

// Peer returns the digest of the peer's key; zero for an insecure peer.
func (c *Connection) Peer() Digest { return c.key.digest }

// Instance returns the instance the peer announced; zero if it announced
// none (or is insecure).
func (c *Connection) Instance() Instance { return c.key.instance }

// Mode says whether the peer (Accept) or this vat (Connect) initiated the
// connection.
func (c *Connection) Mode() Mode { return c.mode }

// ConnStats counts what is outstanding on one connection: the sizes of its
// engine's tables, not a count of messages. An entry stays until both sides
// are done with it, so a call still shows for a moment after its caller has
// the results: the caller's question goes once the Return is handled and
// its Finish sent, the callee's answer when that Finish arrives (or, for a
// Return whose results hold no capability, which says noFinishNeeded, as
// the Return is sent, and the caller sends no Finish), and the codec may
// hold a Finish (or a Release) back for a few milliseconds to send it
// with the next message (see transport_lazy.go). Read right after
// a call, the counts may still include it; they settle without further
// traffic.
type ConnStats struct {
	// Questions is calls (and bootstraps) this vat sent whose Return has
	// not come or whose Finish it has not sent yet.
	Questions int
	// Answers is calls (and bootstraps) the peer sent whose Finish has
	// not come yet, returned or not (a Return with noFinishNeeded ends
	// its answer at once).
	Answers int
	// Imports is the peer's capabilities this vat holds references to.
	Imports int
	// Exports is this vat's capabilities the peer holds references to.
	Exports int
}

// Stats returns what is outstanding on the connection; zero on go-capnp's
// rpc.Conn (the tests' older vatcar peer), whose tables are private.
func (c *Connection) Stats() ConnStats {
	if c.eng == nil {
		return ConnStats{}
	}
	s := c.eng.Stats()
	return ConnStats{Questions: s.Questions, Answers: s.Answers, Imports: s.Imports, Exports: s.Exports}
}

// Done is closed once the connection has ended and left the vat's cache.
func (c *Connection) Done() <-chan struct{} { return c.done }

// Close ends the connection; capabilities imported over it break.
func (c *Connection) Close() error {
	c.closing.Store(true)
	return c.conn.Close()
}

// answerBudget is the codec's Config.MaxAnswers for a connection: going
// over it is logged on log and reported to OnRefused.
func (v *Vat) answerBudget(log *slog.Logger) answerBudget {
	return answerBudget{max: v.cfg.maxAnswers(), over: func() {
		log.Warn("closing the connection: the peer made more calls than it finished", "budget", v.cfg.maxAnswers())
		if v.cfg.OnRefused != nil {
			v.cfg.OnRefused(RefusedAnswerBudget)
		}
	}}
}

// closeBecause closes c in the background, for reason.
func (c *Connection) closeBecause(reason string) {
	c.reason.CompareAndSwap(nil, &reason)
	c.closing.Store(true)
	if !c.vat.track() {
		c.conn.Close() // the vat is closing and waits for c anyway
		return
	}
	go func() {
		defer c.vat.wg.Done()
		c.conn.Close()
	}()
}

// usable reports whether new work may be put on c.
func (c *Connection) usable() bool {
	if c.closing.Load() {
		return false
	}
	select {
	case <-c.conn.Done():
		return false
	default:
		return true
	}
}

// restorer returns the peer's bootstrap Restorer, borrowed: the connection
// releases it when it ends.
func (c *Connection) restorer() captp.Restorer {
	c.bootOnce.Do(func() {
		c.boot = c.conn.Bootstrap(context.Background())
	})
	return captp.Restorer(c.boot)
}

// Restore asks the peer for service id over this connection and returns
// the live capability, which the caller releases. Errors are as for
// SturdyRef.Connect.
func (c *Connection) Restore(ctx context.Context, id ServiceID) (capnp.Client, error) {
	cap, err := c.restore(ctx, id)
	if err != nil {
		return capnp.Client{}, fmt.Errorf("restore %v from %v: %w", id, c.key, classify(err))
	}
	return cap, nil
}

// restore asks the peer for service id and waits for the answer. An error
// never holds the id: some peers put it in their exception's text (C++
// EzRpcServer: "...; name = ID").
func (c *Connection) restore(ctx context.Context, id ServiceID) (capnp.Client, error) {
	cap, err := c.restoreRaw(ctx, id)
	return cap, redactID(err, id)
}

func (c *Connection) restoreRaw(ctx context.Context, id ServiceID) (capnp.Client, error) {
	if c.eng != nil {
		return c.restoreByObjectID(ctx, id)
	}
	fut, release := c.restorer().Restore(ctx, func(p captp.Restorer_restore_Params) error {
		return p.SetId(id)
	})
	defer release()
	res, err := fut.Struct()
	if err != nil {
		if !c.usable() && !IsDisconnected(err) && !IsUnknownService(err) && !IsNoRestorer(err) {
			// The connection ended under the call: go-capnp may say only
			// "call on released client" (the watcher released the peer's
			// Restorer).
			err = fmt.Errorf("%w: %w", ErrDisconnected, err)
		}
		return capnp.Client{}, err
	}
	c.restored.Store(true) // in use, this way: not an idle stranger
	return res.Cap().AddRef(), nil
}

// AddConnection runs CapTP over an established endpoint to another vat and
// returns the connection, which may be an existing one (see below).
//
// For a TLS vat, an endpoint that is not yet a *tls.Conn is handshaken
// here as the server (mode Accept only); a *tls.Conn is handshaken if not
// already. The peer's identity is the digest of its certificate's key.
// Insecure vats take plain endpoints and their inbound peers are anonymous.
//
// When a connection to the same peer process (digest and instance) already
// exists, keepNewConnection decides: a peer that connects again replaces its
// old connection; of crossed connections, the one initiated by the greater
// (digest, instance) wins. Either the old connection is closed
// ("Invalidated by newer connection") or the new one is, and the existing
// one is returned. A connection to this very process (same digest and
// instance) fails with ErrSelfConnection. ctx bounds the handshake only.
func (v *Vat) AddConnection(ctx context.Context, endpoint net.Conn, mode Mode) (*Connection, error) {
	return v.addConnection(ctx, endpoint, mode, "")
}

// addConnection is AddConnection; insecureName, if set, is the cache key of
// an insecure peer dialled by this vat.
func (v *Vat) addConnection(ctx context.Context, endpoint net.Conn, mode Mode, insecureName string) (*Connection, error) {
	key, endpoint, err := v.handshake(ctx, endpoint, mode, insecureName)
	if err != nil {
		endpoint.Close()
		return nil, err
	}
	c := &Connection{vat: v, key: key, mode: mode, remote: endpoint.RemoteAddr().String(), done: make(chan struct{})}
	c.limit = newLimiter(v.cfg.maxConcurrentCalls())
	c.act = newActivity()
	log := v.log.With("peer", key.digest.String(), "mode", mode.String())
	c.log = log

	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		endpoint.Close()
		return nil, ErrClosed
	}
	var old *Connection
	anonymous := key == peerKey{}
	if !anonymous && key.digest == v.Digest() && key.instance == v.instance {
		v.mu.Unlock()
		endpoint.Close()
		return nil, fmt.Errorf("add connection from %s: %w", c.remote, ErrSelfConnection)
	}
	if !anonymous {
		if prev := v.peers[key]; prev != nil && prev.usable() {
			me := identity{v.Digest(), v.instance}
			peer := identity{key.digest, key.instance}
			if !keepNewConnection(me, peer, prev.mode, mode) {
				v.mu.Unlock()
				endpoint.Close()
				log.Debug("dropping crossed connection", "kept", prev.mode.String())
				return prev, nil
			}
			old = prev
		}
	}
	boot := captp.Restorer_ServerToClient(&bootstrap{vat: v, conn: c})
	if v.cfg.goCapnp {
		c.conn = newGoCapnpConn(v, c, endpoint, mode, c.limit.wrap(capnp.Client(boot)), log)
	} else {
		c.eng = v.newEngineConn(c, endpoint, mode, c.limit.wrap(capnp.Client(boot)), log)
		c.conn = c.eng
	}
	if anonymous {
		v.anon[c] = struct{}{}
	} else {
		v.peers[key] = c
	}
	if old != nil {
		// The address that reached the old connection reaches the same
		// process: the new one takes its place (a dial's connection that
		// lost to the peer's crossed one hands its address over).
		for k, bc := range v.byAddr {
			if bc == old {
				v.byAddr[k] = c
			}
		}
	}
	v.wg.Add(1)
	heartbeat := v.cfg.heartbeatInterval() > 0
	if heartbeat {
		v.wg.Add(1)
	}
	v.mu.Unlock()

	if old != nil {
		log.Debug("replacing crossed connection", "old", old.mode.String())
		old.closeBecause("Invalidated by newer connection")
	}
	log.Debug("connected", "remote", c.remote)
	if v.cfg.OnConnection != nil {
		v.cfg.OnConnection(key.digest, true)
	}
	go v.watch(c, log)
	if heartbeat {
		go v.heartbeat(c)
	}
	return c, nil
}

// watch waits for c to end, then removes it from the cache.
func (v *Vat) watch(c *Connection, log *slog.Logger) {
	defer v.wg.Done()
	<-c.conn.Done()
	c.closing.Store(true)
	v.mu.Lock()
	if v.peers[c.key] == c {
		delete(v.peers, c.key)
	}
	delete(v.anon, c)
	for k, bc := range v.byAddr {
		if bc == c {
			delete(v.byAddr, k)
		}
	}
	v.mu.Unlock()
	c.bootOnce.Do(func() {}) // no bootstrap after this
	if c.boot.IsValid() {
		c.boot.Release()
	}
	reason := "ended"
	if r := c.reason.Load(); r != nil {
		reason = *r
	}
	log.Debug("disconnected", "reason", reason)
	if v.cfg.OnConnection != nil {
		v.cfg.OnConnection(c.key.digest, false)
	}
	close(c.done)
}

// handshake secures endpoint (unless the vat is insecure) and returns the
// peer's identity and the endpoint to run CapTP on.
func (v *Vat) handshake(ctx context.Context, endpoint net.Conn, mode Mode, insecureName string) (peerKey, net.Conn, error) {
	if v.cfg.Insecure {
		if _, ok := endpoint.(*tls.Conn); ok {
			return peerKey{}, endpoint, errors.New("add connection: TLS endpoint given to an insecure vat")
		}
		if mode == Connect {
			if insecureName == "" {
				insecureName = endpoint.RemoteAddr().Network() + ":" + endpoint.RemoteAddr().String()
			}
			return peerKey{addr: insecureName}, endpoint, nil
		}
		// No handshake to bound: the peer's first message must come within
		// the handshake timeout (firstMessageCodec lifts the deadline).
		if err := endpoint.SetReadDeadline(time.Now().Add(v.cfg.handshakeTimeout())); err != nil {
			return peerKey{}, endpoint, fmt.Errorf("add connection: %w", err)
		}
		return peerKey{}, endpoint, nil
	}
	tc, ok := endpoint.(*tls.Conn)
	if !ok {
		if mode == Connect {
			return peerKey{}, endpoint, errors.New("add connection: an outbound endpoint must already be TLS (the dialler pins the key)")
		}
		tc = tls.Server(endpoint, serverTLS(v.cert))
	}
	hctx, cancel := context.WithTimeout(ctx, v.cfg.handshakeTimeout())
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		return peerKey{}, tc, fmt.Errorf("tls handshake with %s: %w", endpoint.RemoteAddr(), err)
	}
	id, err := peerIdentity(tc.ConnectionState())
	if err != nil {
		return peerKey{}, tc, fmt.Errorf("tls handshake with %s: %w", endpoint.RemoteAddr(), err)
	}
	return peerKey{digest: id.digest, instance: id.instance}, tc, nil
}

// dial is an outbound connection being made; everyone who wants one to the
// same peer waits on the same dial.
type dial struct {
	done chan struct{}
	conn *Connection
	err  error
}

// connection returns a usable connection to the vat at loc: the one a dial
// to loc's address gave, while it lives; else, unless exact, any usable
// connection to a process with loc's digest (inbound ones too); else the
// result of a dial in progress, or of a new one. A connection still shutting
// down is waited out before dialling again.
func (v *Vat) connection(ctx context.Context, loc Locator, exact bool) (*Connection, error) {
	dk := dialKey{digest: loc.Digest, addr: loc.Address.String()}
	for {
		v.mu.Lock()
		if v.closed {
			v.mu.Unlock()
			return nil, ErrClosed
		}
		c := v.byAddr[dk]
		if c == nil && !exact {
			c = v.anyPeerLocked(loc.Digest)
		}
		if c != nil {
			v.mu.Unlock()
			if c.usable() {
				return c, nil
			}
			select { // wait for it to leave the cache
			case <-c.done:
				continue
			case <-ctx.Done():
				return nil, fmt.Errorf("connect to %v: %w", loc.Digest, ctx.Err())
			}
		}
		d := v.dials[dk]
		if d == nil {
			d = &dial{done: make(chan struct{})}
			v.dials[dk] = d
			v.wg.Add(1)
			go v.dial(dk, loc, d)
		}
		v.mu.Unlock()
		select {
		case <-d.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("connect to %v: %w", loc.Digest, ctx.Err())
		}
		if d.err != nil {
			return nil, d.err
		}
		if d.conn.usable() {
			return d.conn, nil
		}
		// It ended already; look again (and dial again if need be).
		select {
		case <-d.conn.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("connect to %v: %w", loc.Digest, ctx.Err())
		}
	}
}

// anyPeerLocked returns a usable connection to some process with digest d,
// or nil; the zero digest (insecure peers) has none. v.mu is held.
func (v *Vat) anyPeerLocked(d Digest) *Connection {
	if d.IsZero() {
		return nil
	}
	for k, c := range v.peers {
		if k.digest == d && c.usable() {
			return c
		}
	}
	return nil
}

// dial makes an outbound connection for d, bounded by the dial timeout and
// the vat's lifetime rather than by any one caller's context. The
// connection it gives stays dk's (byAddr) until it ends.
func (v *Vat) dial(dk dialKey, loc Locator, d *dial) {
	defer v.wg.Done()
	ctx, cancel := context.WithTimeout(v.ctx, v.cfg.dialTimeout())
	defer cancel()
	insecureName := ""
	if loc.Digest.IsZero() {
		insecureName = dk.addr
	}
	d.conn, d.err = v.dialConn(ctx, loc, insecureName)
	v.mu.Lock()
	delete(v.dials, dk)
	// watch sets closing before it clears byAddr under v.mu: a connection
	// not closing here is cleared by its watch later.
	if d.err == nil && !d.conn.closing.Load() {
		v.byAddr[dk] = d.conn
	}
	v.mu.Unlock()
	close(d.done)
}

func (v *Vat) dialConn(ctx context.Context, loc Locator, insecureName string) (*Connection, error) {
	network, target := loc.Address.dialTarget()
	var nd net.Dialer
	raw, err := nd.DialContext(ctx, network, target)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w: %w", loc.Address, ErrDisconnected, err)
	}
	tuneSocket(raw)
	raw = rawconn.Wrap(raw)
	endpoint := raw
	if !v.cfg.Insecure {
		endpoint = tls.Client(raw, clientTLS(v.cert, loc.Digest))
	}
	c, err := v.addConnection(ctx, endpoint, Connect, insecureName)
	if err != nil {
		if errors.Is(err, ErrKeyMismatch) || errors.Is(err, ErrClosed) {
			return nil, fmt.Errorf("connect to %s: %w", loc.Address, err)
		}
		return nil, fmt.Errorf("connect to %s: %w: %w", loc.Address, ErrDisconnected, err)
	}
	return c, nil
}

// newGoCapnpConn runs a connection on go-capnp's rpc.Conn, the engine of
// vatcar's first releases. Only tests set it (gocapnp_test.go): a vat on
// it is an older vatcar peer, for the tests of how this engine talks to
// one. It is nil in the sidecar.
var newGoCapnpConn func(v *Vat, c *Connection, endpoint net.Conn, mode Mode, boot capnp.Client, log *slog.Logger) capConn
