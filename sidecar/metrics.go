package sidecar

import (
	"regexp"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

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

	// ingress and egress feed calls, latency, bytes and inflight for
	// their side (callmetrics.go).
	ingress, egress *sideMetrics

	mu    sync.Mutex     // guards peers, and the sides' method maps' writers
	peers map[string]int // peer label -> connections open
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
			Help: "CapTP calls (or replies) failed with an Overloaded exception for a per-connection limit while the connection went on, by limit (message size: over the decode limit; answers: too many unfinished calls; restores: too many object-id restores running at once; imports, exports: too many capabilities held).",
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
	}
	m.ingress, m.egress = m.newSide(SideIngress), m.newSide(SideEgress)
	m.Registry.MustRegister(m.calls, m.latency, m.bytes, m.inflight, m.conns, m.restores,
		m.refused, m.refusedCalls, m.limited, m.dials, m.importCalls, m.importUp, m.caveatRefusals, m.exports, m.imports, m.ready, buildInfoMetric(buildinfo.Read()),
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(liveHeapRule)), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
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

// liveHeapRule adds go_gc_heap_live_bytes to the Go collector's default
// metrics: the heap the last garbage collection found live. Unlike
// go_memstats_heap_inuse_bytes, which also counts garbage not yet
// collected (up to GOGC percent more), it does not depend on when the
// collector last ran, so it is what a memory bound can be checked on.
var liveHeapRule = collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/gc/heap/live:bytes$`)}
