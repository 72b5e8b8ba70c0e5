package sidecar

// This file feeds the per-call metrics (vatcar_grpc_calls_total,
// vatcar_grpc_call_duration_seconds, vatcar_grpc_message_bytes_total,
// vatcar_grpc_calls_in_flight) without a grpc stats.Handler: with one
// installed, grpc-go builds and dispatches an event per header, message,
// trailer, begin and end of every call. Instead the ingress's stream
// handler (serveIngressCall) and the egress's client interceptor
// (backendStream) time each call, the bridge's codec reports message sizes
// (bridge.IngressConfig.OnMessage, bridge.EgressConfig.OnMessage), and the
// series of a method are looked up once, not per call.

import (
	"maps"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// sideMetrics are the call metrics of one side. Its methods are safe for
// concurrent use.
type sideMetrics struct {
	m                 *Metrics
	side              string
	active            prometheus.Gauge   // vatcar_grpc_calls_in_flight{side}
	bytesIn, bytesOut prometheus.Counter // vatcar_grpc_message_bytes_total{side, direction}

	// methods maps a full method name to its series, for at most
	// maxMethodLabels methods. It is copied on write, with Metrics.mu
	// held; readers load it without a lock.
	methods atomic.Pointer[map[string]*methodSeries]
	// other holds the series of the methods past maxMethodLabels ("other");
	// set once, with Metrics.mu held.
	other atomic.Pointer[methodSeries]
}

// methodSeries are the series of one side and method label.
type methodSeries struct {
	side    *sideMetrics
	label   string
	latency prometheus.Observer // vatcar_grpc_call_duration_seconds{side, method}
	// codes holds vatcar_grpc_calls_total{side, method, code} by code,
	// each made by the method's first call with that code (a series
	// appears when it is first counted, as with WithLabelValues).
	codes [numCodes]atomic.Pointer[counterRef]
}

// numCodes is the number of gRPC status codes (OK to Unauthenticated).
const numCodes = int(codes.Unauthenticated) + 1

// counterRef holds a counter, so that an atomic.Pointer can.
type counterRef struct{ prometheus.Counter }

// newSide returns the metrics of side, its series without a method label
// made (shown at 0 from the start).
func (m *Metrics) newSide(side string) *sideMetrics {
	s := &sideMetrics{
		m:        m,
		side:     side,
		active:   m.inflight.WithLabelValues(side),
		bytesIn:  m.bytes.WithLabelValues(side, "in"),
		bytesOut: m.bytes.WithLabelValues(side, "out"),
	}
	s.methods.Store(&map[string]*methodSeries{})
	return s
}

// onMessage is the bridge's OnMessage for the side: it counts message
// bytes, as grpc-go's InPayload and OutPayload events gave them.
func (s *sideMetrics) onMessage(sent bool, size int) {
	if sent {
		s.bytesOut.Add(float64(size))
	} else {
		s.bytesIn.Add(float64(size))
	}
}

// series returns the series of method: its own, or "other" once the side
// has maxMethodLabels methods (methods come from peers and local apps, so
// they must not grow the registry without bound).
func (s *sideMetrics) series(method string) *methodSeries {
	if ms := (*s.methods.Load())[method]; ms != nil {
		return ms
	}
	return s.addSeries(method)
}

// addSeries is series for a method not in the map yet.
func (s *sideMetrics) addSeries(method string) *methodSeries {
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	old := *s.methods.Load()
	if ms := old[method]; ms != nil {
		return ms
	}
	if len(old) >= maxMethodLabels {
		if ms := s.other.Load(); ms != nil {
			return ms
		}
		ms := s.newSeries("other")
		s.other.Store(ms)
		return ms
	}
	ms := s.newSeries(method)
	methods := maps.Clone(old)
	methods[method] = ms
	s.methods.Store(&methods)
	return ms
}

func (s *sideMetrics) newSeries(label string) *methodSeries {
	return &methodSeries{side: s, label: label, latency: s.m.latency.WithLabelValues(s.side, label)}
}

// begin counts a call of ms starting and returns its start time.
func (ms *methodSeries) begin() time.Time {
	ms.side.active.Inc()
	return time.Now()
}

// end counts the call that began at start ending with err (as the status
// the client gets: see callCode).
func (ms *methodSeries) end(start time.Time, err error) {
	ms.latency.Observe(time.Since(start).Seconds())
	ms.counter(callCode(err)).Inc()
	ms.side.active.Dec()
}

// counter returns the calls counter of ms for code.
func (ms *methodSeries) counter(code codes.Code) prometheus.Counter {
	if int(code) >= numCodes {
		return ms.side.m.calls.WithLabelValues(ms.side.side, ms.label, code.String())
	}
	p := &ms.codes[code]
	if c := p.Load(); c != nil {
		return c.Counter
	}
	c := &counterRef{ms.side.m.calls.WithLabelValues(ms.side.side, ms.label, code.String())}
	if !p.CompareAndSwap(nil, c) {
		c = p.Load()
	}
	return c.Counter
}

// callCode is the code of the status a call ending with err has: gRPC's
// for a status error, and for any other error the one gRPC sends for it
// (CANCELED or DEADLINE_EXCEEDED for a context's error, UNKNOWN else).
func callCode(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	code := status.Code(err)
	if code == codes.Unknown {
		code = status.FromContextError(err).Code()
	}
	return code
}
