package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vatcar/vatcar/bridge"
	"github.com/vatcar/vatcar/proto/captp"
	"github.com/vatcar/vatcar/vat"
)

// Import connection states, as the admin API reports them.
const (
	stateIdle        = "idle"
	stateConnecting  = "connecting"
	stateConnected   = "connected"
	stateUnavailable = "unavailable"
)

// Reconnection backoff of an import after a failed connection attempt: calls
// in the meantime fail at once with UNAVAILABLE.
const (
	minBackoff = 50 * time.Millisecond
	maxBackoff = 2 * time.Second
)

// imported is one sturdy ref exposed as gRPC. On its first call it starts
// connecting: to every address its host name resolves to (re-resolved every
// resolveInterval and soon after a failure), each address with a connection
// of its own, pinned to the ref's digest (balance.go). Each new call goes to
// a connected address (power of two choices on calls outstanding); a stream
// stays on the capability it started on. Calls wait for a first attempt in
// progress, and fail at once with UNAVAILABLE (NOT_FOUND for an unknown or
// revoked id) when no address can take them.
//
// Locking: mu guards the fields below it and every backend's state, svc
// and lastErr; it is not held while connecting or releasing a capability.
type imported struct {
	Import      // as configured (URI possibly @FILE)
	ref         *vat.SturdyRef
	fromConfig  bool
	log         *slog.Logger
	metrics     *Metrics
	resolve     Resolver
	resolveSoon chan struct{} // (cap 1) asks resolveLoop to resolve again
	slots       *bridge.Slots // the import's call slots, by app connection (director)
	stop        context.CancelFunc
	wg          sync.WaitGroup // resolveLoop and run

	mu         sync.Mutex
	in         *ingress // own endpoint; nil when reached only via GRPCListen
	started    bool     // the first call came: resolveLoop runs
	backends   []*backend
	changed    chan struct{} // closed and replaced when a backend changes state
	lastErr    error         // why the last attempt failed
	resolveErr error         // why the last resolution failed, if it did
	closed     bool
}

// newImport parses im and registers it (without listening).
func (s *Sidecar) newImport(im Import, fromConfig bool) (*imported, error) {
	if err := CheckName(im.Name); err != nil {
		return nil, fmt.Errorf("%w: bad import NAME %q: %w", ErrConfig, im.Name, err)
	}
	if im.Listen != "" {
		if err := CheckHostPort(im.Listen); err != nil {
			return nil, fmt.Errorf("%w: bad import listen %q: %w", ErrConfig, im.Listen, err)
		}
	}
	uri, err := vat.ReadURI(im.URI)
	if err != nil {
		return nil, fmt.Errorf("%w: import %q: unreadable cap file %q: %w", ErrConfig, im.Name, im.URI, err)
	}
	ref, err := s.vat.Import(uri)
	if err != nil {
		return nil, fmt.Errorf("%w: import %q: %s: %w", ErrConfig, im.Name, describeURI(im.URI, uri, err), err)
	}
	m := &imported{
		Import: im, ref: ref, fromConfig: fromConfig, metrics: s.metrics, resolve: s.cfg.resolver(),
		log: s.log.With("import", im.Name), resolveSoon: make(chan struct{}, 1), changed: make(chan struct{}),
		slots: bridge.NewCappedSlots(s.cfg.MaxConcurrentCalls, s.cfg.MaxConcurrentCalls),
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return nil, fmt.Errorf("import %q: %w", im.Name, ErrDraining)
	}
	if _, ok := s.imports[im.Name]; ok {
		return nil, fmt.Errorf("import %q: %w", im.Name, ErrExists)
	}
	s.imports[im.Name] = m
	s.metrics.imports.Inc()
	return m, nil
}

// listenImport opens im's own endpoint: at im.Listen, or on a free loopback
// port when im.Listen is empty and no route names it.
func (s *Sidecar) listenImport(im *imported) error {
	addr := im.Listen
	if addr == "" {
		s.mu.Lock()
		routed := slices.Contains(mapValues(s.routes), im.Name)
		s.mu.Unlock()
		if routed {
			return nil
		}
		addr = "127.0.0.1:0"
	}
	in, err := s.startIngress(addr, func(ctx context.Context, _ string) (captp.GrpcService, error) {
		return im.director(ctx)
	})
	if err != nil {
		return fmt.Errorf("%w: import %q listen %q: %w", ErrConfig, im.Name, addr, err)
	}
	im.mu.Lock()
	if im.closed {
		// Removed (RemoveImport, a reload, Close or Shutdown) while
		// the endpoint started: close saw no endpoint to stop.
		im.mu.Unlock()
		in.stop()
		return fmt.Errorf("import %q: removed while its endpoint started: %w", im.Name, ErrNotFound)
	}
	im.in = in
	im.mu.Unlock()
	im.log.Info("import ready", "listen", in.addr.String(), "peer", im.ref.Locator().Digest.String(),
		"address", im.ref.Locator().Address.String())
	im.log.Debug("import URI", "uri", im.ref.URI())
	return nil
}

// describeURI names, for the error err of importing uri, the value at
// fault: the cap file it came from (given is "@PATH"), or the URI itself,
// quoted and cut short, without its service id (a secret, even in a URI
// that is wrong elsewhere; the vat's errors hide it too).
func describeURI(given, uri string, err error) string {
	what := "unusable URI" // well-formed, refused for another reason (TLS mode)
	if errors.Is(err, vat.ErrInvalidURI) {
		what = "malformed URI"
	}
	if path, ok := strings.CutPrefix(given, "@"); ok {
		return fmt.Sprintf("%s in cap file %q", what, path)
	}
	if i := strings.LastIndex(uri, "/"); strings.HasPrefix(uri, "capnp://") && i > len("capnp://") {
		uri = uri[:i+1] + "..."
	}
	const maxQuoted = 120
	if len(uri) > maxQuoted {
		uri = uri[:maxQuoted] + "..."
	}
	return fmt.Sprintf("%s %q", what, uri)
}

func mapValues(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// route is the director of the shared gRPC endpoint: it picks the import
// named by the route for the call's service, or by the "*" route.
func (s *Sidecar) route(ctx context.Context, fullMethod string) (captp.GrpcService, error) {
	service := serviceOf(fullMethod)
	s.mu.Lock()
	name, ok := s.routes[service]
	if !ok {
		name, ok = s.routes[RouteDefault]
	}
	im := s.imports[name]
	s.mu.Unlock()
	if !ok {
		return captp.GrpcService{}, status.Errorf(codes.Unimplemented, "vatcar: no route for service %q", service)
	}
	if im == nil {
		return captp.GrpcService{}, status.Errorf(codes.Unavailable, "vatcar: route for service %q names import %q, which is gone", service, name)
	}
	return im.director(ctx)
}

// serviceOf returns the service of a full method name, "/pkg.Service/M".
func serviceOf(fullMethod string) string {
	s := strings.TrimPrefix(fullMethod, "/")
	if i := strings.LastIndex(s, "/"); i >= 0 {
		return s[:i]
	}
	return s
}

// client returns a new reference to the import's capability at one of its
// addresses, and counts the call as outstanding there until done is
// called. The first call starts connecting; a call waits for an attempt in
// progress (at most until ctx ends), and fails at once with UNAVAILABLE
// (NOT_FOUND when the peer does not know the service id) when no address is
// connected or connecting.
func (m *imported) client(ctx context.Context) (svc *heldClient, b *backend, err error) {
	for {
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return nil, nil, status.Errorf(codes.Unavailable, "vatcar: import %q is closed", m.Name)
		}
		if !m.started {
			m.started = true
			ctx, stop := context.WithCancel(context.Background())
			m.stop = stop
			m.wg.Add(1)
			go m.resolveLoop(ctx)
		}
		if b := m.pickLocked(); b != nil {
			h := b.svc
			h.hold()
			b.outstanding.Add(1)
			m.mu.Unlock()
			b.calls.Inc()
			return h, b, nil
		}
		if !m.waitingLocked() {
			err := m.lastErr
			if len(m.backends) == 0 && m.resolveErr != nil {
				err = m.resolveErr
			}
			m.mu.Unlock()
			return nil, nil, unavailable(m.Name, err)
		}
		ch := m.changed
		m.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, nil, status.FromContextError(ctx.Err()).Err()
		}
	}
}

// director is client for the ingress, once the call has a slot of the
// import's (see refused): it records the import and the backend serving
// the call, so that forgetOnCapTPFailure ends the call there
// (backend.done) and gives the slot back.
func (m *imported) director(ctx context.Context) (captp.GrpcService, error) {
	app := appConnOf(ctx)
	if err := m.slots.Take(app); err != nil {
		return captp.GrpcService{}, m.refused(err)
	}
	h, b, err := m.client(ctx)
	if err != nil {
		m.slots.Give(app)
		return captp.GrpcService{}, err
	}
	if !markImport(ctx, m, b, h) {
		// Not through serveIngressCall: nothing would end the call
		// or give back what it borrowed.
		h.release()
		b.done(false)
		m.slots.Give(app)
		return captp.GrpcService{}, status.Errorf(codes.Internal, "vatcar: import %q: the call is not tracked", m.Name)
	}
	return captp.GrpcService(h.c), nil // lent: forgetOnCapTPFailure gives it back
}

// refused is the status of a call the import's slots refused
// (RESOURCE_EXHAUSTED, naming the import, the bound and the flag).
//
// An import's call slots: its calls in flight stay below
// --max-concurrent-calls N, which is what an exporter with the same
// setting lets one connection run on one export, and an app connection
// (one HTTP/2 connection to the import's endpoint) may hold at most N of
// them and no more than stay free (bridge.NewCappedSlots). So an app alone
// gets N/2 calls at once, and another app's calls get through while one
// holds all it can.
func (m *imported) refused(err error) error {
	var se *bridge.SlotsError
	if !errors.As(err, &se) {
		return status.Errorf(codes.ResourceExhausted, "vatcar: import %q: %v", m.Name, err)
	}
	reason := refusedImport
	if se.PerCaller {
		reason = refusedApp
	}
	m.metrics.refusedCalls.WithLabelValues(SideIngress, reason).Inc()
	if se.PerCaller {
		return status.Errorf(codes.ResourceExhausted,
			"vatcar: import %q: too many concurrent calls from this app connection (%d, --max-concurrent-calls)", m.Name, se.Limit)
	}
	return status.Errorf(codes.ResourceExhausted,
		"vatcar: import %q: too many concurrent calls: an app connection may hold no more than the import has free (%d in all; app connections with calls: %d; --max-concurrent-calls)",
		m.Name, se.Limit, se.Callers)
}

// waitingLocked reports whether a call should wait for a backend: the host
// is still being resolved for the first time, or some address is making
// its first attempt or a new one. m.mu is held.
func (m *imported) waitingLocked() bool {
	if len(m.backends) == 0 {
		return m.resolveErr == nil
	}
	for _, b := range m.backends {
		if b.state == stateConnecting {
			return true
		}
	}
	return false
}

// done ends a call that client sent to b: on a CapTP failure (the peer is
// gone, the ref revoked or unknown there) b restores its capability again.
func (b *backend) done(failedByCapTP bool) {
	b.outstanding.Add(-1)
	if failedByCapTP {
		select {
		case b.kick <- struct{}{}:
		default:
		}
	}
}

// unavailable is the status of a call on an import that cannot connect.
func unavailable(name string, err error) error {
	code := codes.Unavailable
	switch {
	case vat.IsUnknownService(err) || errors.Is(err, vat.ErrUnknownService):
		return status.Errorf(codes.NotFound, "vatcar: import %q: Unknown persistent service ID", name)
	case errors.As(err, new(*vat.CaveatError)) || strings.Contains(fmt.Sprint(err), bridge.RefusedByCaveat):
		return status.Errorf(codes.PermissionDenied, "vatcar: import %q: %v", name, err)
	case errors.Is(err, vat.ErrKeyMismatch):
		return status.Errorf(code, "vatcar: import %q: peer vat key mismatch (the peer's key does not match the URI's digest): %v", name, err)
	}
	return status.Errorf(code, "vatcar: import %q unavailable (retrying): %v", name, err)
}

// endpoint returns the import's own endpoint, nil when it has none (yet).
func (m *imported) endpoint() *ingress {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.in
}

// close stops the endpoint at once and drops the capabilities.
func (m *imported) close() {
	m.mu.Lock()
	in := m.in
	m.closed = true
	stop := m.stop
	m.mu.Unlock()
	if in != nil {
		in.stop()
	}
	if stop != nil {
		stop()
	}
	m.wg.Wait()
}

// status reports the import: connected while any address is, connecting
// while some address makes an attempt, unavailable when every address
// failed (not_found or revoked when the peer refused the ref), idle before
// the first call.
func (m *imported) status() ImportStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := ImportStatus{Name: m.Name, URI: m.ref.URI(), State: stateIdle}
	if m.in != nil {
		st.Listen = m.in.addr.String()
	}
	if !m.started {
		return st
	}
	st.State = m.failedStateLocked()
	if m.waitingLocked() {
		st.State = stateConnecting
	}
	for _, b := range m.backends {
		if b.state == stateConnected {
			st.State = stateConnected
		}
	}
	return st
}

// ListImports implements the admin API.
func (s *Sidecar) ListImports() []ImportStatus {
	s.mu.Lock()
	imps := make([]*imported, 0, len(s.imports))
	for _, im := range s.imports {
		imps = append(imps, im)
	}
	s.mu.Unlock()
	out := make([]ImportStatus, 0, len(imps))
	for _, im := range imps {
		out = append(out, im.status())
	}
	slices.SortFunc(out, func(a, b ImportStatus) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// AddImport implements the admin API: the import lives until removed or the
// sidecar stops (a config reload leaves it alone).
func (s *Sidecar) AddImport(_ context.Context, im Import) (ImportStatus, error) {
	return s.addImport(im, false)
}

func (s *Sidecar) addImport(im Import, fromConfig bool) (ImportStatus, error) {
	m, err := s.newImport(im, fromConfig)
	if err != nil {
		return ImportStatus{}, err
	}
	if err := s.listenImport(m); err != nil {
		s.dropImport(m)
		return ImportStatus{}, err
	}
	return m.status(), nil
}

// dropImport removes m if it is still the import of its name (another
// caller may have removed it, and a third added another of that name,
// meanwhile), and closes it either way. It reports whether it removed m.
func (s *Sidecar) dropImport(m *imported) bool {
	s.mu.Lock()
	ours := s.imports[m.Name] == m
	if ours {
		delete(s.imports, m.Name)
	}
	s.mu.Unlock()
	m.close()
	if ours {
		s.metrics.imports.Dec()
	}
	return ours
}

// RemoveImport implements the admin API.
func (s *Sidecar) RemoveImport(name string) error { return s.removeImport(name) }

func (s *Sidecar) removeImport(name string) error {
	s.mu.Lock()
	m, ok := s.imports[name]
	s.mu.Unlock()
	if !ok || !s.dropImport(m) { // not listed, or removed meanwhile by another
		return fmt.Errorf("import %q: %w", name, ErrNotFound)
	}
	s.log.Info("import removed", "import", name)
	return nil
}
