package sidecar

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/vatcar/vatcar/internal/buildinfo"
	"github.com/vatcar/vatcar/vat/engine"
)

// Metric label values for the two sides of the bridge.
const (
	// SideIngress is the gRPC server side: calls from local apps to imports.
	SideIngress = "ingress"
	// SideEgress is the gRPC client side: calls from peers to our exports'
	// local servers.
	SideEgress = "egress"
)

// maxMethodLabels bounds the distinct method label values per side; calls to
// further methods are counted under "other". Methods come from peers and local
// apps, so they must not grow the registry without bound.
const maxMethodLabels = 256

// Metrics are the sidecar's Prometheus metrics, in their own registry. No
// label ever holds a service id or a URI. Metrics is safe for concurrent use.
type Metrics struct {
	// Registry holds every metric below and the Go and process collectors.
	Registry *prometheus.Registry

	calls    *prometheus.CounterVec   // side, method, code
	latency  *prometheus.HistogramVec // side, method
	bytes    *prometheus.CounterVec   // side, direction
	inflight *prometheus.GaugeVec     // side
	conns    *prometheus.GaugeVec     // peer (vat digest)
	restores *prometheus.CounterVec   // result
	refused  *prometheus.CounterVec   // reason
	// refusedCalls counts calls refused for want of call slots, by side
	// and reason (refusedConn, refusedExport, refusedApp, refusedImport).
	refusedCalls *prometheus.CounterVec
	// limited counts calls and questions failed for a per-connection
	// limit while their connection went on, by limit (vat.Config.OnLimit).
	limited *prometheus.CounterVec
	dials   *prometheus.CounterVec // import, result
	// importCalls counts calls per import and address index (the order in
	// which the import's addresses appeared, "other" past 63).
	importCalls *prometheus.CounterVec // import, address_index
	importUp    *prometheus.GaugeVec   // import: addresses connected
	// caveatRefusals counts restores and calls refused by a narrowed
	// ref's caveat, by caveat kind (methods, expiry, not-before, peer).
	caveatRefusals *prometheus.CounterVec
	exports        prometheus.Gauge
	imports        prometheus.Gauge
	ready          prometheus.Gauge

	mu      sync.Mutex
	methods map[string]map[string]bool // side -> method labels in use
	peers   map[string]int             // peer label -> connections open
}

// peerConnection counts a connection to or from peer opening (up) or
// closing. A peer's series goes when its last connection closes: anyone with
// a TLS key can connect, and each new key must not leave a series behind.
func (m *Metrics) peerConnection(peer string, up bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.peers == nil {
		m.peers = map[string]int{}
	}
	if up {
		m.peers[peer]++
		m.conns.WithLabelValues(peer).Set(float64(m.peers[peer]))
		return
	}
	if m.peers[peer] <= 1 {
		delete(m.peers, peer)
		m.conns.DeleteLabelValues(peer)
		return
	}
	m.peers[peer]--
	m.conns.WithLabelValues(peer).Set(float64(m.peers[peer]))
}

// limitReasons are the reasons of vatcar_vat_limited_calls_total.
var limitReasons = []string{engine.LimitMessageSize, engine.LimitAnswers, engine.LimitImports, engine.LimitExports}

// NewMetrics makes the sidecar's metrics in a new registry.
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vatcar_grpc_calls_total",
			Help: "gRPC calls finished, by side (ingress: from local apps; egress: to local servers), full method and status code.",
		}, []string{"side", "method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vatcar_grpc_call_duration_seconds",
			Help:    "gRPC call duration, by side and full method.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}, []string{"side", "method"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vatcar_grpc_message_bytes_total",
			Help: "gRPC message payload bytes, by side and direction (in: received by the sidecar, out: sent).",
		}, []string{"side", "direction"}),
		inflight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vatcar_grpc_calls_in_flight",
			Help: "gRPC calls running now, by side.",
		}, []string{"side"}),
		conns: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vatcar_vat_connections",
			Help: "CapTP connections open now, by peer vat key digest.",
		}, []string{"peer"}),
		restores: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vatcar_restores_total",
			Help: "Sturdy ref restores peers asked this vat for, by result: ok, unknown (no such id, revoked ones included), error, empty (an empty id: heartbeats of vatcar peers, or probes).",
		}, []string{"result"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vatcar_vat_refused_connections_total",
			Help: "CapTP connections the vat refused or closed for their peer's behaviour, by reason (handshake: failed TLS or protocol handshake; max connections: over the inbound limit; evicted idle, evicted over key share: made room for a newcomer; answer budget: too many answers held unfinished; send queue: the peer read nothing while messages waited; protocol violation: the peer broke CapTP; heartbeat: the peer did not answer).",
		}, []string{"reason"}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vatcar_vat_limited_calls_total",
			Help: "CapTP calls (or replies) failed with an Overloaded exception for a per-connection limit while the connection went on, by limit (message size: over the decode limit; answers: too many unfinished calls; imports, exports: too many capabilities held).",
		}, []string{"reason"}),
		refusedCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vatcar_refused_calls_total",
			Help: "Calls refused with RESOURCE_EXHAUSTED for want of call slots (--max-concurrent-calls), by side and reason (egress: connection, export; ingress: app connection, import).",
		}, []string{"side", "reason"}),
		dials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vatcar_import_connects_total",
			Help: "Attempts to connect an import to its peer, by import name and result (ok, error).",
		}, []string{"import", "result"}),
		importCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vatcar_import_calls_total",
			Help: "Calls an import sent, by import name and address index (the order in which the addresses its host resolves to appeared; \"other\" past 63).",
		}, []string{"import", "address_index"}),
		importUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vatcar_import_connected_addresses",
			Help: "Addresses of an import (those its host name resolves to) with a live connection, by import name.",
		}, []string{"import"}),
		caveatRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vatcar_caveat_refusals_total",
			Help: "Restores and calls refused by a narrowed ref's caveat, by caveat kind (methods, expiry, not-before, peer).",
		}, []string{"caveat"}),
		exports: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vatcar_exports",
			Help: "Services exported now.",
		}),
		imports: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vatcar_imports",
			Help: "Sturdy refs imported now.",
		}),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vatcar_ready",
			Help: "1 once listeners are up and cap files written, 0 while starting or draining.",
		}),
		methods: map[string]map[string]bool{},
	}
	m.Registry.MustRegister(m.calls, m.latency, m.bytes, m.inflight, m.conns, m.restores,
		m.refused, m.refusedCalls, m.limited, m.dials, m.importCalls, m.importUp, m.caveatRefusals, m.exports, m.imports, m.ready, buildInfoMetric(buildinfo.Read()),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, l := range [][2]string{{SideEgress, refusedConn}, {SideEgress, refusedExport}, {SideIngress, refusedApp}, {SideIngress, refusedImport}} {
		m.refusedCalls.WithLabelValues(l[0], l[1]) // shown at 0 from the start
	}
	for _, r := range limitReasons {
		m.limited.WithLabelValues(r)
	}
	return m
}

// Reasons of vatcar_refused_calls_total.
const (
	refusedConn   = "connection"     // egress: a peer connection held its --max-concurrent-calls on an export
	refusedExport = "export"         // egress: the export's total was held and the connection its share
	refusedApp    = "app connection" // ingress: an app connection held --max-concurrent-calls on an import
	refusedImport = "import"         // ingress: an app connection held as many as the import had free
)

// overloaded returns an EgressConfig.OnOverloaded that counts refusals.
func (m *Metrics) overloaded() func(perCaller bool) {
	conn, export := m.refusedCalls.WithLabelValues(SideEgress, refusedConn), m.refusedCalls.WithLabelValues(SideEgress, refusedExport)
	return func(perCaller bool) {
		if perCaller {
			conn.Inc()
		} else {
			export.Inc()
		}
	}
}

// methodLabel returns method, or "other" once a side has maxMethodLabels.
func (m *Metrics) methodLabel(side, method string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	seen := m.methods[side]
	if seen == nil {
		seen = map[string]bool{}
		m.methods[side] = seen
	}
	if seen[method] {
		return method
	}
	if len(seen) >= maxMethodLabels {
		return "other"
	}
	seen[method] = true
	return method
}

// statsHandler returns a grpc stats.Handler that records calls, codes,
// latency and bytes for one side. inflight, when not nil, counts the calls
// running now (the drain waits for it to reach zero).
func (m *Metrics) statsHandler(side string, inflight *atomic.Int64) stats.Handler {
	return &statsHandler{
		m:        m,
		side:     side,
		inflight: inflight,
		active:   m.inflight.WithLabelValues(side),
		bytesIn:  m.bytes.WithLabelValues(side, "in"),
		bytesOut: m.bytes.WithLabelValues(side, "out"),
	}
}

// statsHandler feeds the metrics of one side from gRPC's stats events. The
// series without a method label are looked up once, not per message.
type statsHandler struct {
	m                 *Metrics
	side              string
	inflight          *atomic.Int64
	active            prometheus.Gauge
	bytesIn, bytesOut prometheus.Counter
}

type rpcKey struct{}

// rpcInfo is what the stats handler keeps per call. The ingress director
// records the import serving the call in imp, so that forgetOnCapTPFailure
// can make it drop its capability when the call fails because of CapTP, and
// give back the call's slot.
type rpcInfo struct {
	method  string
	imp     atomic.Pointer[imported] // set: the call holds a slot of imp's (imported.slots)
	backend atomic.Pointer[backend]
	capTP   atomic.Bool // the call failed because of CapTP (markCapTPFailure)
}

// markCapTPFailure is the ingress's OnCapTPFailure: it records that the
// call of ctx failed because of CapTP, not because of the far app.
func markCapTPFailure(ctx context.Context, _ error) {
	if info, _ := ctx.Value(rpcKey{}).(*rpcInfo); info != nil {
		info.capTP.Store(true)
	}
}

// markImport records that im serves the call of ctx at b, and reports
// whether it could (the call has a stats handler's rpcInfo).
func markImport(ctx context.Context, im *imported, b *backend) bool {
	info, _ := ctx.Value(rpcKey{}).(*rpcInfo)
	if info == nil {
		return false
	}
	info.imp.Store(im)
	info.backend.Store(b)
	return true
}

func (h *statsHandler) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	return context.WithValue(ctx, rpcKey{}, &rpcInfo{method: h.m.methodLabel(h.side, info.FullMethodName)})
}

func (h *statsHandler) HandleRPC(ctx context.Context, s stats.RPCStats) {
	info, _ := ctx.Value(rpcKey{}).(*rpcInfo)
	if info == nil {
		return
	}
	switch s := s.(type) {
	case *stats.Begin:
		h.active.Inc()
		if h.inflight != nil {
			h.inflight.Add(1)
		}
	case *stats.InPayload:
		h.bytesIn.Add(float64(s.Length))
	case *stats.OutPayload:
		h.bytesOut.Add(float64(s.Length))
	case *stats.End:
		h.active.Dec()
		if h.inflight != nil {
			h.inflight.Add(-1)
		}
		code := status.Code(s.Error)
		h.m.calls.WithLabelValues(h.side, info.method, code.String()).Inc()
		h.m.latency.WithLabelValues(h.side, info.method).Observe(s.EndTime.Sub(s.BeginTime).Seconds())

	}
}

// TagConn names each app connection to an ingress (appConnOf), the unit
// an import's call slots are shared by.
func (h *statsHandler) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	if h.side != SideIngress {
		return ctx
	}
	return context.WithValue(ctx, appConnKey{}, new(appConn))
}

// appConn names one app connection (one HTTP/2 transport) to an ingress.
// It is never empty, so that every new(appConn) is a distinct pointer.
type appConn struct{ _ byte }

type appConnKey struct{}

// appConnOf returns the app connection a call of ctx came on (a comparable
// value, equal exactly for the calls of one connection); nil without the
// ingress's stats handler.
func appConnOf(ctx context.Context) any {
	if c, ok := ctx.Value(appConnKey{}).(*appConn); ok {
		return c
	}
	return nil
}

func (h *statsHandler) HandleConn(context.Context, stats.ConnStats) {}
