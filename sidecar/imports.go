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

	capnp "capnproto.org/go/capnp/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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

// imported is one sturdy ref exposed as gRPC. It connects lazily, on the
// first call, keeps the restored capability while its connection lives, and
// after a failure lets calls fail fast until the backoff allows the next
// attempt, made by the next call.
//
// Locking: mu guards the fields below it; it is not held while connecting
// or releasing a capability.
type imported struct {
	Import     // as configured (URI possibly @FILE)
	ref        *vat.SturdyRef
	fromConfig bool
	log        *slog.Logger
	metrics    *Metrics
	in         *ingress // own endpoint; nil when reached only via GRPCListen

	mu      sync.Mutex
	state   string
	svc     capnp.Client // valid in stateConnected; owned here
	lastErr error        // why the last attempt failed
	retryAt time.Time
	backoff time.Duration
	attempt chan struct{} // closed when the attempt in progress ends
	closed  bool
	wg      sync.WaitGroup // attempts in progress
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
		Import: im, ref: ref, fromConfig: fromConfig, metrics: s.metrics,
		log: s.log.With("import", im.Name), state: stateIdle,
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
		markImport(ctx, im)
		return im.client(ctx)
	})
	if err != nil {
		return fmt.Errorf("%w: import %q listen %q: %w", ErrConfig, im.Name, addr, err)
	}
	im.in = in
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
	markImport(ctx, im)
	return im.client(ctx)
}

// serviceOf returns the service of a full method name, "/pkg.Service/M".
func serviceOf(fullMethod string) string {
	s := strings.TrimPrefix(fullMethod, "/")
	if i := strings.LastIndex(s, "/"); i >= 0 {
		return s[:i]
	}
	return s
}

// client returns a new reference to the import's capability, connecting
// first if need be. While the peer is unreachable it fails at once with
// UNAVAILABLE (NOT_FOUND when the peer does not know the service id); it
// waits only for an attempt in progress, at most until ctx ends.
func (m *imported) client(ctx context.Context) (captp.GrpcService, error) {
	for {
		m.mu.Lock()
		switch {
		case m.closed:
			m.mu.Unlock()
			return captp.GrpcService{}, status.Errorf(codes.Unavailable, "vatcar: import %q is closed", m.Name)
		case m.state == stateConnected:
			c := m.svc.AddRef()
			m.mu.Unlock()
			return captp.GrpcService(c), nil
		case m.attempt != nil:
			ch := m.attempt
			m.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return captp.GrpcService{}, status.FromContextError(ctx.Err()).Err()
			}
		case time.Now().Before(m.retryAt):
			err := m.lastErr
			wait := time.Until(m.retryAt).Round(time.Millisecond)
			m.mu.Unlock()
			return captp.GrpcService{}, unavailable(m.Name, err, wait)
		}
		ch := make(chan struct{})
		m.attempt = ch
		m.state = stateConnecting
		m.wg.Add(1)
		m.mu.Unlock()
		go m.connect(ch)
	}
}

// connect makes one connection attempt and records its outcome.
func (m *imported) connect(done chan struct{}) {
	defer m.wg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), importDialTimeout)
	c, err := m.ref.Connect(ctx)
	cancel()
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.metrics.dials.WithLabelValues(m.Name, result).Inc()
	m.mu.Lock()
	defer func() {
		m.attempt = nil
		close(done)
		m.mu.Unlock()
	}()
	if m.closed {
		if err == nil {
			go c.Release()
		}
		return
	}
	if err != nil {
		m.state = stateUnavailable
		m.lastErr = err
		m.backoff = min(max(m.backoff*2, minBackoff), maxBackoff)
		m.retryAt = time.Now().Add(m.backoff)
		m.log.Info("import unavailable", "err", err, "retry_in", m.backoff.String())
		return
	}
	m.state, m.svc, m.lastErr, m.backoff, m.retryAt = stateConnected, c, nil, 0, time.Time{}
	m.log.Info("import connected", "peer", m.ref.Locator().Digest.String())
}

// capTPFailure reports whether a call's error came from CapTP rather than
// from the app: the peer is gone, the ref was revoked or is unknown there.
// The app's own statuses keep the capability.
func capTPFailure(err error) bool {
	msg := status.Convert(err).Message()
	return vat.IsUnknownService(err) || vat.IsNoRestorer(err) ||
		strings.Contains(msg, vat.ErrRevoked.Error()) || strings.Contains(msg, vat.ErrDisconnected.Error()) ||
		strings.Contains(msg, "disconnected") || strings.Contains(msg, "connection closed")
}

// forget drops the capability after a call failed because of CapTP; the
// next call connects (restores) again.
func (m *imported) forget() { m.disconnected() }

// disconnected forgets the capability after its connection ended; the next
// call connects again at once.
func (m *imported) disconnected() {
	m.mu.Lock()
	if m.state != stateConnected {
		m.mu.Unlock()
		return
	}
	c := m.svc
	m.svc, m.state = capnp.Client{}, stateIdle
	m.mu.Unlock()
	c.Release()
	m.log.Info("import disconnected; will reconnect on the next call")
}

// unavailable is the status of a call on an import that cannot connect.
func unavailable(name string, err error, retryIn time.Duration) error {
	code := codes.Unavailable
	switch {
	case vat.IsUnknownService(err) || errors.Is(err, vat.ErrUnknownService):
		return status.Errorf(codes.NotFound, "vatcar: import %q: Unknown persistent service ID", name)
	case errors.Is(err, vat.ErrKeyMismatch):
		return status.Errorf(code, "vatcar: import %q: peer vat key mismatch (the peer's key does not match the URI's digest): %v", name, err)
	}
	return status.Errorf(code, "vatcar: import %q unavailable (retrying in %v): %v", name, retryIn, err)
}

// close stops the endpoint at once and drops the capability.
func (m *imported) close() {
	if m.in != nil {
		m.in.stop()
	}
	m.mu.Lock()
	m.closed = true
	c := m.svc
	m.svc, m.state = capnp.Client{}, stateIdle
	m.mu.Unlock()
	c.Release()
	m.wg.Wait()
}

func (m *imported) status() ImportStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := ImportStatus{Name: m.Name, URI: m.ref.URI(), State: m.state}
	if m.in != nil {
		st.Listen = m.in.addr.String()
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
		s.removeImport(im.Name)
		return ImportStatus{}, err
	}
	return m.status(), nil
}

// RemoveImport implements the admin API.
func (s *Sidecar) RemoveImport(name string) error { return s.removeImport(name) }

func (s *Sidecar) removeImport(name string) error {
	s.mu.Lock()
	m, ok := s.imports[name]
	delete(s.imports, name)
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("import %q: %w", name, ErrNotFound)
	}
	m.close()
	s.metrics.imports.Dec()
	s.log.Info("import removed", "import", name)
	return nil
}
