package sidecar

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vatcar/vatcar/vat"
)

// Re-resolution of an import's host name: every resolveInterval, and after a
// connection fails or an attempt fails, but no more often than
// resolveMinInterval.
const (
	resolveInterval    = 30 * time.Second
	resolveMinInterval = time.Second
)

// Resolver maps a host name to its addresses (IP literals). nil in Config
// means the system resolver (net.DefaultResolver.LookupHost).
type Resolver func(ctx context.Context, host string) ([]string, error)

// backend is one address of an import: a connection to the process there
// and the capability restored over it. The import's mu guards state, svc
// and lastErr; outstanding and calls are updated without it.
type backend struct {
	addr        vat.Address
	ref         *vat.SturdyRef // the import's ref at addr
	outstanding atomic.Int64   // calls running on it (least-loaded choice)
	calls       prometheus.Counter
	stop        context.CancelFunc // ends run
	kick        chan struct{}      // (cap 1) forget asks run to restore again

	state   string      // stateConnecting, stateConnected or stateUnavailable
	svc     *heldClient // not nil in stateConnected; one reference is b's
	lastErr error
}

// heldClient is a backend's capability, lent to the calls on it (the
// ingress's BorrowedClients): a count of the backend's reference and one
// per call running on it stands for capnp AddRefs, which cost three to
// four allocations a call; the last to let go releases the capability.
type heldClient struct {
	c    capnp.Client
	refs atomic.Int64
}

// holdClient returns c held once (by its backend), or nil for a null c.
func holdClient(c capnp.Client) *heldClient {
	if !c.IsValid() {
		return nil
	}
	h := &heldClient{c: c}
	h.refs.Store(1)
	return h
}

// hold adds a reference: a call borrows the capability.
func (h *heldClient) hold() { h.refs.Add(1) }

// release drops a reference, releasing the capability with the last.
func (h *heldClient) release() {
	if h.refs.Add(-1) == 0 {
		h.c.Release()
	}
}

// isName reports whether a needs resolving: a TCP host that is not an IP
// literal.
func isName(a vat.Address) bool {
	if a.Network != "tcp" {
		return false
	}
	_, err := netip.ParseAddr(a.Host)
	return err != nil
}

// addresses returns the addresses the import's host stands for now.
func (m *imported) addresses(ctx context.Context) ([]vat.Address, error) {
	loc := m.ref.Locator().Address
	if !isName(loc) {
		return []vat.Address{loc}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, importDialTimeout)
	defer cancel()
	hosts, err := m.resolve(ctx, loc.Host)
	if err != nil {
		return nil, err
	}
	var out []vat.Address
	for _, h := range hosts {
		a := loc
		a.Host = h
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		return nil, &net.DNSError{Err: "no addresses", Name: loc.Host, IsNotFound: true}
	}
	return out, nil
}

// resolveLoop keeps the import's backends in line with what its host name
// resolves to, until ctx ends. A host that is not a name is "resolved" once.
func (m *imported) resolveLoop(ctx context.Context) {
	defer m.wg.Done()
	last := time.Time{}
	for {
		addrs, err := m.addresses(ctx)
		last = time.Now()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			m.log.Info("import: resolving its host failed", "host", m.ref.Locator().Address.Host, "err", err)
			m.resolveFailed(err)
		} else {
			m.setAddresses(ctx, addrs)
		}
		if !isName(m.ref.Locator().Address) && err == nil {
			return
		}
		periodic := time.NewTimer(resolveInterval)
		select {
		case <-ctx.Done():
			periodic.Stop()
			return
		case <-periodic.C:
		case <-m.resolveSoon:
			periodic.Stop()
			wait := time.NewTimer(time.Until(last.Add(resolveMinInterval)))
			select {
			case <-ctx.Done():
				wait.Stop()
				return
			case <-wait.C:
			}
		}
	}
}

// askResolve asks resolveLoop to resolve again soon.
func (m *imported) askResolve() {
	select {
	case m.resolveSoon <- struct{}{}:
	default:
	}
}

// resolveFailed records a failed resolution; with no backends yet, waiting
// calls fail with it.
func (m *imported) resolveFailed(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.resolveErr = err
	if len(m.backends) == 0 {
		m.changedLocked()
	}
}

// setAddresses starts a backend for each new address and stops those of
// addresses no longer listed.
func (m *imported) setAddresses(ctx context.Context, addrs []vat.Address) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	m.resolveErr = nil
	keep := m.backends[:0]
	var gone []*backend
	for _, b := range m.backends {
		if slices.Contains(addrs, b.addr) {
			keep = append(keep, b)
		} else {
			gone = append(gone, b)
		}
	}
	m.backends = keep
	for _, a := range addrs {
		if slices.ContainsFunc(m.backends, func(b *backend) bool { return b.addr == a }) {
			continue
		}
		bctx, stop := context.WithCancel(ctx)
		b := &backend{addr: a, ref: m.ref.At(a), stop: stop, kick: make(chan struct{}, 1), state: stateConnecting}
		b.calls = m.metrics.importCalls.WithLabelValues(m.Name, addressIndex(len(m.backends)))
		m.backends = append(m.backends, b)
		m.wg.Add(1)
		go m.run(bctx, b)
		if len(addrs) > 1 || isName(m.ref.Locator().Address) {
			m.log.Info("import: address added", "address", a.String())
		}
	}
	for _, b := range gone {
		m.log.Info("import: address gone", "address", b.addr.String())
		b.stop() // run drops its capability
	}
	m.changedLocked()
}

// run keeps b connected until ctx ends: it restores the import's service
// over a connection to exactly b's address, serves calls while that
// connection lives, and after a failure tries again with backoff.
func (m *imported) run(ctx context.Context, b *backend) {
	defer m.wg.Done()
	var backoff time.Duration
	for ctx.Err() == nil {
		m.setBackend(b, stateConnecting, capnp.Client{}, nil)
		dctx, cancel := context.WithTimeout(ctx, importDialTimeout)
		c, conn, err := b.ref.Dial(dctx)
		cancel()
		if ctx.Err() != nil {
			if err == nil {
				c.Release()
			}
			break
		}
		result := "ok"
		if err != nil {
			result = "error"
		}
		m.metrics.dials.WithLabelValues(m.Name, result).Inc()
		if err != nil {
			backoff = min(max(backoff*2, minBackoff), maxBackoff)
			m.log.Info("import: address unavailable", "address", b.addr.String(), "err", err, "retry_in", backoff.String())
			m.setBackend(b, stateUnavailable, capnp.Client{}, err)
			m.askResolve()
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
			continue
		}
		backoff = 0
		m.setBackend(b, stateConnected, c, nil)
		m.log.Info("import connected", "address", b.addr.String(), "peer", m.ref.Locator().Digest.String())
		var died <-chan struct{} // nil for a local restore: lives as long as we do
		if conn != nil {
			died = conn.Done()
		}
		select {
		case <-ctx.Done():
		case <-b.kick:
			m.log.Info("import: restoring again after a CapTP failure", "address", b.addr.String())
		case <-died:
			m.log.Info("import disconnected; reconnecting", "address", b.addr.String())
			m.askResolve()
		}
	}
	m.setBackend(b, stateUnavailable, capnp.Client{}, nil)
}

// setBackend moves b to state with capability svc (owned by b from now
// on) and error err, releasing the capability it had, and wakes calls
// waiting for a backend.
func (m *imported) setBackend(b *backend, state string, svc capnp.Client, err error) {
	m.mu.Lock()
	old := b.svc
	b.state, b.svc = state, holdClient(svc)
	if err != nil {
		b.lastErr, m.lastErr = err, err
	}
	m.changedLocked()
	up := 0
	for _, b := range m.backends {
		if b.state == stateConnected {
			up++
		}
	}
	m.metrics.importUp.WithLabelValues(m.Name).Set(float64(up))
	m.mu.Unlock()
	if old != nil {
		old.release() // the calls on it keep it until they end
	}
}

// changedLocked wakes the calls waiting for a backend. m.mu is held.
func (m *imported) changedLocked() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// pickLocked returns a connected backend for a new call, the less loaded
// of two chosen at random (power of two choices), or nil. m.mu is held. It
// allocates nothing: it runs on every call.
func (m *imported) pickLocked() *backend {
	n := 0
	var only *backend
	for _, b := range m.backends {
		if b.state == stateConnected {
			n++
			only = b
		}
	}
	if n < 2 {
		return only
	}
	i := rand.IntN(n)
	j := rand.IntN(n - 1)
	if j >= i {
		j++
	}
	var bi, bj *backend
	k := 0
	for _, b := range m.backends {
		if b.state != stateConnected {
			continue
		}
		switch k {
		case i:
			bi = b
		case j:
			bj = b
		}
		k++
	}
	if bj.outstanding.Load() < bi.outstanding.Load() {
		return bj
	}
	return bi
}

// maxAddressLabels bounds the address_index label values of an import.
const maxAddressLabels = 64

// addressIndex is the metric label of the i-th address of an import.
func addressIndex(i int) string {
	if i >= maxAddressLabels-1 {
		return "other"
	}
	return strconv.Itoa(i)
}

// resolver returns how the config resolves import host names.
func (c Config) resolver() Resolver {
	if c.Resolve != nil {
		return c.Resolve
	}
	if c.HostsFile == "" {
		return net.DefaultResolver.LookupHost
	}
	file := c.HostsFile
	return func(ctx context.Context, host string) ([]string, error) {
		addrs, err := lookupHostsFile(file, host)
		if err != nil || len(addrs) > 0 {
			return addrs, err
		}
		return net.DefaultResolver.LookupHost(ctx, host)
	}
}

// lookupHostsFile returns the addresses a hosts(5)-style file lists for
// host, in file order.
func lookupHostsFile(file, host string) ([]string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("hosts file: %w", err)
	}
	var out []string
	for n, line := range strings.Split(string(data), "\n") {
		line, _, _ = strings.Cut(line, "#")
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		ip, err := netip.ParseAddr(fields[0])
		if err != nil || len(fields) < 2 {
			return nil, fmt.Errorf("hosts file %s line %d: want \"IP NAME...\"", file, n+1)
		}
		for _, name := range fields[1:] {
			if strings.EqualFold(name, host) {
				out = append(out, ip.String())
			}
		}
	}
	return out, nil
}
