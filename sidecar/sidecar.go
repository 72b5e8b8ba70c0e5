package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/vatcar/vatcar/bridge"
	"github.com/vatcar/vatcar/vat"
)

// Locking: Sidecar.mu guards exports, imports, routes and draining.
// It is never held while dialling, calling a capability, stopping a server or
// closing a connection; those happen after unlocking (see removeExport and
// removeImport). Each import has its own lock for its connection state
// (imports.go); exportOps, taken before mu, makes adds and removals of
// exports take turns.

// Sidecar is a running vatcar daemon: a vat, its exports and imports, the
// shared gRPC endpoint and the admin listener. Make one with New, then call
// Start; Shutdown drains it. It is safe for concurrent use.
type Sidecar struct {
	cfg     Config // with defaults
	log     *slog.Logger
	metrics *Metrics
	vat     *vat.Vat
	table   *vat.Table
	kinds   bridge.Kinds // from cfg.ProtoDescriptors; nil: none known
	revs    *revocations // the revocation list (revocations.go)

	// testHookListChecked, when set, runs in addExport between the check
	// of the revocation list and the table entry (tests force a list read
	// into that window).
	testHookListChecked func()

	egressInflight atomic.Int64 // calls from peers running on our exports' servers
	ready          atomic.Bool
	drainFlag      atomic.Bool // draining, readable without mu on the call path

	serveCtx    context.Context // ends when Shutdown begins: stops accepting
	stopServing context.CancelFunc
	wg          sync.WaitGroup // serve loops

	closeOnce sync.Once

	vatListener net.Listener
	admin       *adminListener // the admin gRPC API; nil when off
	health      *adminListener // /healthz, /readyz, /metrics; may be admin itself; nil when off
	shared      *ingress       // GRPCListen, nil when not configured

	// exportOps serializes adding, removing and closing exports (admin
	// API, reloads, doClose): an export is listed before its backend
	// client and table entry exist, and its service id is its name's, so
	// two operations on one name must not interleave. Taken before mu.
	exportOps sync.Mutex

	mu       sync.Mutex
	draining bool
	exports  map[string]*export
	imports  map[string]*imported
	routes   map[string]string // gRPC service name (or "*") -> import name
}

// New checks cfg, loads (or creates) the vat key and reads the imports' cap
// files. Configuration problems return an error wrapping ErrConfig that names
// the offending value. log may be nil (nothing is logged).
func New(cfg Config, log *slog.Logger) (*Sidecar, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	s := &Sidecar{
		cfg:     cfg,
		log:     orDiscard(log),
		metrics: NewMetrics(),
		table:   vat.NewTable(nil),
		exports: map[string]*export{},
		imports: map[string]*imported{},
	}
	if cfg.SecretKeyFile != "" {
		if err := checkKeyFile(cfg.SecretKeyFile); err != nil {
			return nil, err
		}
		warnKeyFileMode(s.log, cfg.SecretKeyFile)
	}
	kinds, err := loadKinds(cfg.ProtoDescriptors)
	if err != nil {
		return nil, err
	}
	s.kinds = kinds
	v, err := vat.New(vat.Config{
		KeyFile:            cfg.SecretKeyFile,
		ListenAddress:      cfg.Listen,
		PublicAddress:      cfg.PublicAddress,
		Restorer:           vat.RestorerFunc(s.restore),
		Logger:             s.log,
		Insecure:           cfg.Insecure,
		MaxConcurrentCalls: cfg.MaxConcurrentCalls,
		MaxMessageSize:     capnpMessageLimit(int(cfg.MaxMessageSize), int(cfg.MaxMetadataSize)),
		DialTimeout:        importDialTimeout,
		HeartbeatInterval:  time.Duration(cfg.HeartbeatInterval),
		HeartbeatTimeout:   time.Duration(cfg.HeartbeatTimeout),
		MaxConnections:     cfg.MaxConnections,
		OnConnection:       s.onConnection,
		OnRestore:          s.onRestore,
		OnRefused:          func(reason string) { s.metrics.refused.WithLabelValues(reason).Inc() },
		OnLimit:            func(reason string) { s.metrics.limited.WithLabelValues(reason).Inc() },
		LazyReturn:         bridge.LazyReturn,
	})
	if err != nil {
		if cfg.SecretKeyFile != "" {
			return nil, fmt.Errorf("%w: unreadable key %q: %w", ErrConfig, cfg.SecretKeyFile, err)
		}
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	s.vat = v
	s.serveCtx, s.stopServing = context.WithCancel(context.Background())
	s.revs = newRevocations(cfg.Revocations, s.metrics.Registry, s.log)
	s.table.SetPolicy(vat.Policy{Revoked: s.revs.set.has, ClockSkew: time.Duration(cfg.ClockSkew)})
	if cfg.SecretKeyFile == "" && len(cfg.Exports) > 0 {
		s.log.Warn("no --secret-key-file: the vat key is ephemeral, so export URIs change on every restart")
	}
	for _, im := range cfg.Imports {
		if _, err := s.newImport(im, true); err != nil {
			s.stopServing()
			v.Close()
			return nil, err
		}
	}
	s.routes = routeMap(cfg.Routes)
	return s, nil
}

// checkKeyFile fails when path exists but cannot be read: vat.New would
// otherwise report it in its own words.
func checkKeyFile(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: unreadable key %q: %w", ErrConfig, path, err)
	}
	return f.Close()
}

// importDialTimeout bounds one connection attempt of an import, so a call
// on an unreachable peer fails within it even without a deadline.
const importDialTimeout = 5 * time.Second

// capnpMessageLimit is the capnp decode limit for the gRPC limits: a
// message (the bridge carries at most 1 MiB of one in a capnp message,
// but the limit does not count on it), a call's headers and trailers, and
// 1 MiB for framing; at least minCapnpMessageLimit, so that one of the
// bridge's stream sends (1 MiB of chunks, tiny ones included, plus their
// overhead) always fits however low the gRPC limits are. There is no
// 64 MiB floor any more: a larger capnp message fails its call alone
// (RESOURCE_EXHAUSTED), so sidecars with different limits do not abort
// each other's connections.
func capnpMessageLimit(maxMessage, maxMetadata int) uint64 {
	return max(uint64(maxMessage)+2*uint64(maxMetadata)+1<<20, minCapnpMessageLimit)
}

// minCapnpMessageLimit is the least capnp decode limit: twice the
// bridge's largest send.
const minCapnpMessageLimit = 2 << 20

func routeMap(routes []Route) map[string]string {
	m := make(map[string]string, len(routes))
	for _, r := range routes {
		m[r.Service] = r.Import
	}
	return m
}

// Metrics returns the sidecar's metrics.
func (s *Sidecar) Metrics() *Metrics { return s.metrics }

// Digest returns the vat's key digest ("sha-256:..." or "insecure").
func (s *Sidecar) Digest() vat.Digest { return s.vat.Digest() }

// Start opens the listeners (vat, imports, shared gRPC endpoint, admin),
// exports the configured services, writes their cap files and the ready file,
// and then reports ready. On error everything opened is closed again.
func (s *Sidecar) Start() (err error) {
	defer func() {
		if err != nil {
			s.closeAll()
		}
	}()
	if s.cfg.CapDir != "" {
		// A missing cap dir is created (private: cap files are bearer secrets).
		if err := os.MkdirAll(s.cfg.CapDir, 0o700); err != nil {
			return fmt.Errorf("%w: --cap-dir %q: %w", ErrConfig, s.cfg.CapDir, err)
		}
	}
	if s.cfg.Listen != "" {
		l, err := s.vat.Listen()
		if err != nil {
			return fmt.Errorf("%w: --listen %q: %w", ErrConfig, s.cfg.Listen, err)
		}
		s.vatListener = l
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.vat.Serve(s.serveCtx, l); err != nil {
				s.log.Error("vat listener failed", "err", err)
			}
		}()
	}
	if pub, ok := s.vat.PublicAddress(); ok && pub.Network == "tcp" {
		if ip := net.ParseIP(pub.Host); ip != nil && ip.IsUnspecified() {
			s.log.Warn("the public address is a wildcard address: peers cannot dial the URIs of this vat; set --public-address", "public_address", pub.String())
		}
	}
	if s.cfg.Insecure {
		s.log.Warn("INSECURE MODE: TLS is off: CapTP traffic (including sturdy ref ids) is readable on the network and peers are not authenticated")
	}
	// The revocation list is read before anything is exported, so a revoked
	// ref is never served, not even for a moment after a restart.
	s.readRevocations(true)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.pollRevocations()
	}()
	for _, e := range s.cfg.Exports {
		if _, err := s.addExport(e, true); err != nil {
			return err
		}
	}
	s.pruneCapDir()
	s.mu.Lock()
	imps := make([]*imported, 0, len(s.imports))
	for _, im := range s.imports {
		imps = append(imps, im)
	}
	s.mu.Unlock()
	for _, im := range imps {
		if err := s.listenImport(im); err != nil {
			return err
		}
	}
	if s.cfg.GRPCListen != "" {
		in, err := s.startIngress(s.cfg.GRPCListen, s.route)
		if err != nil {
			return fmt.Errorf("%w: --grpc-listen %q: %w", ErrConfig, s.cfg.GRPCListen, err)
		}
		s.shared = in
		s.log.Info("gRPC endpoint listening", "address", in.addr.String(), "routes", len(s.cfg.Routes))
	}
	if err := s.startAdminListeners(); err != nil {
		return err
	}
	if s.cfg.ReadyFile != "" {
		if err := writeJSONFile(s.cfg.ReadyFile, s.Addresses()); err != nil {
			return fmt.Errorf("%w: --ready-file %q: %w", ErrConfig, s.cfg.ReadyFile, err)
		}
	}
	s.ready.Store(true)
	s.metrics.ready.Set(1)
	s.log.Info("ready", "vat", s.vat.Digest().String(), "exports", len(s.cfg.Exports), "imports", len(s.cfg.Imports))
	return nil
}

// startAdminListeners opens the admin gRPC API (--admin-listen) and the
// health listener (--health-listen): one port serving both when they name
// the same host:port.
func (s *Sidecar) startAdminListeners() error {
	adminAddr, healthAddr := s.cfg.AdminListen, s.cfg.HealthListen
	health := healthMux(s.metrics.Registry, s.ready.Load)
	if adminAddr != AdminListenOff && adminAddr == healthAddr {
		g := newAdminGRPCServer(s)
		a, err := startHTTP(adminAddr, g, adminHandler(g, health), s.log)
		if err != nil {
			return fmt.Errorf("%w: --admin-listen %q: %w", ErrConfig, adminAddr, err)
		}
		s.admin, s.health = a, a
		s.log.Warn("the admin API shares the health port: every process that reaches it may mint, revoke and add exports", "address", a.addr)
		return nil
	}
	if adminAddr != AdminListenOff {
		a, err := startGRPC(adminAddr, newAdminGRPCServer(s), s.log)
		if err != nil && s.cfg.defaultAdmin && errors.Is(err, errSocketInUse) {
			// Another sidecar on this host holds the default: take a
			// socket of our own rather than fail (flags are obeyed).
			if a, err = startGRPC(fallbackAdminListen(), newAdminGRPCServer(s), s.log); err == nil {
				s.log.Warn("the default admin socket is another sidecar's: this one's admin API is elsewhere", "address", a.addr, "ctl", "vatcar ctl --admin "+a.addr)
			}
		}
		if err != nil {
			return fmt.Errorf("%w: --admin-listen %q: %w", ErrConfig, adminAddr, err)
		}
		s.admin = a
		if adminOnTCP(adminAddr) {
			s.log.Warn("the admin API listens on TCP: every process that reaches the port may mint, revoke and add exports", "address", a.addr)
		} else {
			s.log.Info("admin API listening", "address", a.addr)
		}
	}
	if healthAddr != AdminListenOff {
		h, err := startHTTP(healthAddr, nil, health, s.log)
		if err != nil && s.cfg.defaultHealth && errors.Is(err, syscall.EADDRINUSE) {
			// The default port is another sidecar's: take a free one.
			if h, err = startHTTP("127.0.0.1:0", nil, health, s.log); err == nil {
				s.log.Warn("the default health port is taken (another sidecar?): health and metrics listen elsewhere", "address", h.addr)
			}
		}
		if err != nil {
			return fmt.Errorf("%w: --health-listen %q: %w", ErrConfig, healthAddr, err)
		}
		s.health = h
		s.log.Info("health and metrics listening", "address", h.addr)
	}
	return nil
}

// Addresses describes what a started sidecar bound. It is what --ready-file
// holds, as JSON.
type Addresses struct {
	// Vat is the vat's key digest, "sha-256:..." or "insecure".
	Vat string `json:"vat"`
	// Listen is the bound CapTP address (tcp:HOST:PORT or unix:PATH).
	Listen string `json:"listen,omitempty"`
	// Admin is the bound admin gRPC API: unix:PATH or host:port.
	Admin string `json:"admin,omitempty"`
	// Health is the bound listener of /healthz, /readyz and /metrics,
	// host:port (Admin's too when they share one port).
	Health string `json:"health,omitempty"`
	// GRPC is the bound shared gRPC endpoint, host:port.
	GRPC string `json:"grpc,omitempty"`
	// Imports maps import names to their bound local endpoints.
	Imports map[string]string `json:"imports,omitempty"`
}

// Addresses returns the bound addresses.
func (s *Sidecar) Addresses() Addresses {
	a := Addresses{Vat: s.vat.Digest().String(), Imports: map[string]string{}}
	if s.vatListener != nil {
		a.Listen = vat.AddressOf(s.vatListener.Addr()).String()
	}
	if s.admin != nil {
		a.Admin = s.admin.addr
	}
	if s.health != nil {
		a.Health = s.health.addr
	}
	if s.shared != nil {
		a.GRPC = s.shared.addr.String()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, im := range s.imports {
		if in := im.endpoint(); in != nil {
			a.Imports[name] = in.addr.String()
		}
	}
	return a
}

// writeJSONFile writes v to path (mode 0600) through a temporary file, so
// readers never see half of it.
func writeJSONFile(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Shutdown drains the sidecar: it reports not ready, stops accepting calls
// and connections, lets calls in flight finish until ctx ends (or the drain
// timeout passes, whichever is first), then closes everything. It returns
// nil when every call finished in time.
func (s *Sidecar) Shutdown(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(s.cfg.DrainTimeout))
	defer cancel()
	s.ready.Store(false)
	s.metrics.ready.Set(0)
	s.mu.Lock()
	s.draining = true
	s.drainFlag.Store(true)
	var ins []*ingress
	for _, im := range s.imports {
		if in := im.endpoint(); in != nil {
			ins = append(ins, in)
		}
	}
	s.mu.Unlock()
	if s.shared != nil {
		ins = append(ins, s.shared)
	}
	s.log.Info("draining", "timeout", time.Duration(s.cfg.DrainTimeout).String())
	s.stopServing() // the vat accepts no new connections
	var drained sync.WaitGroup
	var cut atomic.Int32
	for _, in := range ins {
		drained.Go(func() {
			if !in.drain(ctx) {
				cut.Add(1)
			}
		})
	}
	drained.Wait()
	err := s.waitEgress(ctx)
	if n := cut.Load(); n > 0 && err == nil {
		err = fmt.Errorf("calls still running on %d gRPC endpoints: %w", n, ctx.Err())
	}
	s.closeAll()
	if err != nil {
		s.log.Warn("drain timeout: calls still running were cut off", "err", err)
	} else {
		s.log.Info("drained")
	}
	return err
}

// waitEgress waits until no call from a peer runs on an export's server.
func (s *Sidecar) waitEgress(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for s.egressInflight.Load() > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d egress calls still running: %w", s.egressInflight.Load(), ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// closeAll closes every listener, connection and client at once. Only the
// first call does anything.
func (s *Sidecar) closeAll() { s.closeOnce.Do(s.doClose) }

func (s *Sidecar) doClose() {
	s.ready.Store(false)
	if s.cfg.ReadyFile != "" {
		os.Remove(s.cfg.ReadyFile) // a stale one would say ready
	}
	s.stopServing()
	s.exportOps.Lock() // an export being added is in the map whole, or not yet
	s.mu.Lock()
	s.draining = true
	s.drainFlag.Store(true)
	exports := s.exports
	imports := s.imports
	s.exports = map[string]*export{}
	s.imports = map[string]*imported{}
	s.mu.Unlock()
	s.exportOps.Unlock()
	for _, im := range imports {
		im.close()
	}
	if s.shared != nil {
		s.shared.stop()
	}
	s.vat.Close()
	for _, e := range exports {
		e.close(s.table)
	}
	s.wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if s.admin != nil {
		s.admin.close(ctx)
	}
	if s.health != nil && s.health != s.admin {
		s.health.close(ctx)
	}
}

// Close closes the sidecar at once, cutting off calls in flight.
func (s *Sidecar) Close() error {
	s.closeAll()
	return nil
}

// restore is the vat's restorer: the table (root ids and narrowed refs,
// checked against the revocation list), with a log line and a count for
// every restore a narrowed ref's caveat refuses.
func (s *Sidecar) restore(ctx context.Context, seg vat.ServiceID) (capnp.Client, error) {
	c, err := s.table.Restore(ctx, seg)
	var ce *vat.CaveatError
	if errors.As(err, &ce) {
		peer, _ := vat.PeerFromContext(ctx)
		s.metrics.caveatRefusals.WithLabelValues(ce.Kind).Inc()
		s.log.Info("restore refused by a narrowed ref's caveat", "caveat", ce.Kind, "peer", peer.String(), "detail", ce.Detail)
	}
	return c, err
}

func (s *Sidecar) onConnection(peer vat.Digest, up bool) {
	s.metrics.peerConnection(peer.String(), up)
}

func (s *Sidecar) onRestore(result vat.RestoreResult) {
	s.metrics.restores.WithLabelValues(string(result)).Inc()
}
