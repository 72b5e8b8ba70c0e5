package vat

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/vatcar/vatcar/internal/rawconn"
)

// Locking: Vat.mu guards the fields below it. It is never held while
// dialling, handshaking, calling a capability, calling a hook, or closing a
// connection; each of those happens after unlocking. (addConnection does
// call engine.NewConn under it, so that choosing between crossed
// connections and publishing the winner is one step; NewConn only starts
// goroutines.)

// Vat is a CapTP endpoint with its own key: it serves its Restorer to peers
// and connects to the vats named by sturdy refs, keeping one connection per
// peer. It is safe for concurrent use.
type Vat struct {
	cfg      Config
	key      *Key
	log      *slog.Logger
	restorer Restorer

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // serve loops and connection watchers

	inbound inbound // connections Serve holds

	instance Instance        // this process's, announced in cert
	cert     tls.Certificate // self-signed, announcing instance

	mu        sync.Mutex
	closed    bool
	public    Address
	peers     map[peerKey]*Connection // established, by peer process
	dials     map[dialKey]*dial       // outbound connections being made
	byAddr    map[dialKey]*Connection // the live connection each dial target gave
	anon      map[*Connection]struct{}
	listeners map[net.Listener]struct{}
}

// New returns a vat configured by cfg. It does not listen: call Listen and
// Serve, or ListenAndServe.
func New(cfg Config) (*Vat, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("new vat: %w", err)
	}
	key := cfg.Key
	if key == nil {
		var err error
		if key, err = LoadOrCreateKey(cfg.KeyFile); err != nil {
			return nil, fmt.Errorf("new vat: %w", err)
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for _, a := range cfg.Tags {
		log = log.With(a)
	}
	v := &Vat{
		cfg:       cfg,
		key:       key,
		log:       log,
		restorer:  cfg.Restorer,
		instance:  newInstance(),
		peers:     make(map[peerKey]*Connection),
		dials:     make(map[dialKey]*dial),
		byAddr:    make(map[dialKey]*Connection),
		anon:      make(map[*Connection]struct{}),
		listeners: make(map[net.Listener]struct{}),
	}
	if !cfg.Insecure {
		v.log = v.log.With("vat", key.Digest().String())
		cert, err := selfSigned(key.signer, v.instance)
		if err != nil {
			return nil, fmt.Errorf("new vat: %w", err)
		}
		v.cert = cert
	}
	pub := cfg.PublicAddress
	if pub == "" {
		pub = cfg.ListenAddress
	}
	if pub != "" {
		v.public, _ = ParseAddress(pub) // checked by Validate
	}
	v.ctx, v.cancel = context.WithCancel(context.Background())
	if cfg.Insecure {
		v.log.Warn("vat is INSECURE: TLS is off, peers are not authenticated")
	}
	return v, nil
}

// Instance returns the random id of this process of the vat's identity,
// which peers learn in the TLS handshake.
func (v *Vat) Instance() Instance { return v.instance }

// Key returns the vat's secret key.
func (v *Vat) Key() *Key { return v.key }

// Digest returns the digest of the vat's key; the zero Digest for an
// insecure vat.
func (v *Vat) Digest() Digest {
	if v.cfg.Insecure {
		return Digest{}
	}
	return v.key.Digest()
}

// DeriveID is v.Key().DeriveID(name): a stable service id for name.
func (v *Vat) DeriveID(name string) ServiceID { return v.key.DeriveID(name) }

// PublicAddress returns the address peers should use to reach the vat, and
// false if it has none (a client-only vat).
func (v *Vat) PublicAddress() (Address, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.public, !v.public.IsZero() && !(v.public.Network == "tcp" && v.public.Port == 0)
}

// Listen opens a listener on Config.ListenAddress (removing a stale Unix
// socket file first). When the public address has port 0 it takes the
// bound port, so URIs made afterwards carry the real port. The caller
// passes the listener to Serve.
func (v *Vat) Listen() (net.Listener, error) {
	if v.cfg.ListenAddress == "" {
		return nil, errors.New("listen: vat has no ListenAddress")
	}
	addr, _ := ParseAddress(v.cfg.ListenAddress) // checked by Validate
	network, target := addr.dialTarget()
	if network == "unix" {
		if fi, err := os.Lstat(target); err == nil && fi.Mode()&os.ModeSocket != 0 {
			os.Remove(target)
		}
	}
	l, err := net.Listen(network, target)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	bound := AddressOf(l.Addr())
	v.mu.Lock()
	if v.public.Network == "tcp" && v.public.Port == 0 && bound.Network == "tcp" {
		v.public.Port = bound.Port
	}
	v.mu.Unlock()
	v.log.Info("listening", "address", bound.String())
	return l, nil
}

// ListenAndServe is Listen followed by Serve.
func (v *Vat) ListenAndServe(ctx context.Context) error {
	l, err := v.Listen()
	if err != nil {
		return err
	}
	return v.Serve(ctx, l)
}

// Serve accepts connections from peer vats on l until ctx ends or the vat
// is closed (also if it is already), then closes l and returns nil; it returns an error if
// accepting fails otherwise. Each connection is handshaken and run with
// AddConnection(ctx, conn, Accept) in its own goroutine.
func (v *Vat) Serve(ctx context.Context, l net.Listener) error {
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		l.Close()
		return nil
	}
	v.listeners[l] = struct{}{}
	v.wg.Add(1)
	v.mu.Unlock()
	defer v.wg.Done()

	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	stopVat := context.AfterFunc(v.ctx, func() { l.Close() })
	defer stopVat()
	defer func() {
		v.mu.Lock()
		delete(v.listeners, l)
		v.mu.Unlock()
		l.Close()
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil || v.ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("serve: accept: %w", err)
		}
		tuneSocket(c)
		c = rawconn.Wrap(c)
		cc := &countedConn{Conn: c, in: &v.inbound, since: time.Now()}
		ok, ev := v.inbound.admit(cc, v.cfg.maxConnections(), v.cfg.strangerGrace())
		if !ok {
			c.Close()
			v.refuse(RefusedMaxConnections, slog.LevelWarn, c.RemoteAddr(), nil)
			continue
		}
		if ev.victim != nil {
			v.evict(ev)
		}
		if !v.track() {
			cc.Close()
			return nil
		}
		go func() {
			defer v.wg.Done()
			conn, err := v.AddConnection(v.ctx, cc, Accept)
			if err != nil {
				if !errors.Is(err, ErrClosed) && v.ctx.Err() == nil {
					v.refuse(RefusedHandshake, slog.LevelInfo, cc.RemoteAddr(), err)
				}
				return
			}
			v.inbound.attach(cc, conn)
		}()
	}
}

// track adds a goroutine to v.wg unless the vat is closed.
func (v *Vat) track() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return false
	}
	v.wg.Add(1)
	return true
}

// Close ends every connection and listener of the vat (the seed's switch)
// and waits for them to finish. Capabilities imported from peers break.
// Close is idempotent.
func (v *Vat) Close() error {
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		v.wg.Wait()
		return nil
	}
	v.closed = true
	var conns []*Connection
	for _, c := range v.peers {
		conns = append(conns, c)
	}
	for c := range v.anon {
		conns = append(conns, c)
	}
	var listeners []net.Listener
	for l := range v.listeners {
		listeners = append(listeners, l)
	}
	v.mu.Unlock()
	// The connections close first: calls still running there are ended by
	// their connection (the peer sees it lost, UNAVAILABLE at its app), not
	// by the vat's context, whose cancel would let each call's handler
	// send its Return, "context canceled", before the connection went. A
	// connection accepted meanwhile is refused (closed is set). The
	// listeners close after the cancel, which tells Serve it is no error.
	for _, c := range conns {
		c.Close()
	}
	v.cancel()
	for _, l := range listeners {
		l.Close()
	}
	v.wg.Wait()
	return nil
}
