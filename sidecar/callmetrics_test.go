package sidecar

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// seriesValue returns the value of the series name{labels} of m (a
// counter's, a gauge's, or a histogram's count), and whether it exists.
func seriesValue(t *testing.T, m *Metrics, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, s := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range s.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue series
				}
			}
			switch {
			case s.Counter != nil:
				return s.GetCounter().GetValue(), true
			case s.Gauge != nil:
				return s.GetGauge().GetValue(), true
			case s.Histogram != nil:
				return float64(s.GetHistogram().GetSampleCount()), true
			}
		}
	}
	return 0, false
}

// callSeries is one side's calls of a method with a code, as counted by
// vatcar_grpc_calls_total and vatcar_grpc_call_duration_seconds.
func callSeries(t *testing.T, m *Metrics, side, method, code string) (calls, timed float64) {
	t.Helper()
	calls, _ = seriesValue(t, m, "vatcar_grpc_calls_total", map[string]string{"side": side, "method": method, "code": code})
	timed, _ = seriesValue(t, m, "vatcar_grpc_call_duration_seconds", map[string]string{"side": side, "method": method})
	return calls, timed
}

func bytesSeries(t *testing.T, m *Metrics, side, direction string) float64 {
	t.Helper()
	v, _ := seriesValue(t, m, "vatcar_grpc_message_bytes_total", map[string]string{"side": side, "direction": direction})
	return v
}

func inFlight(t *testing.T, m *Metrics, side string) float64 {
	t.Helper()
	v, _ := seriesValue(t, m, "vatcar_grpc_calls_in_flight", map[string]string{"side": side})
	return v
}

// TestCallMetricsCountEachSide: the importer's ingress and the exporter's
// egress count every call by method and code, time it, count the message
// bytes exactly (uncompressed payloads, in and out), and count a call in
// flight until it ends, also when the app cancels it; the drain's egress
// count follows.
func TestCallMetricsCountEachSide(t *testing.T) {
	p := startTestPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	imp, exp := p.importer.Metrics(), p.exporter.Metrics()

	const oks, notFounds = 3, 2
	req := &testgrpc.SimpleRequest{ResponseSize: 700, Payload: &testgrpc.Payload{Body: make([]byte, 1000)}}
	var reqBytes, respBytes int
	for range oks {
		resp, err := p.client.UnaryCall(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		reqBytes += proto.Size(req)
		respBytes += proto.Size(resp)
	}
	failing := &testgrpc.SimpleRequest{ResponseStatus: &testgrpc.EchoStatus{Code: int32(codes.NotFound), Message: "nope"}}
	for range notFounds {
		if _, err := p.client.UnaryCall(ctx, failing); status.Code(err) != codes.NotFound {
			t.Fatalf("UnaryCall: %v, want NOT_FOUND from the backend", err)
		}
		reqBytes += proto.Size(failing)
	}
	const unary = "/grpc.testing.TestService/UnaryCall"
	for _, c := range []struct {
		m          *Metrics
		side, code string
		want       float64
	}{
		{imp, SideIngress, "OK", oks},
		{exp, SideEgress, "OK", oks},
		{imp, SideIngress, "NotFound", notFounds},
		{exp, SideEgress, "NotFound", notFounds},
	} {
		calls, _ := callSeries(t, c.m, c.side, unary, c.code)
		if calls != c.want {
			t.Errorf("%s calls %s: %v, want %v", c.side, c.code, calls, c.want)
		}
	}
	for _, c := range []struct {
		m    *Metrics
		side string
	}{{imp, SideIngress}, {exp, SideEgress}} {
		if _, timed := callSeries(t, c.m, c.side, unary, ""); timed != oks+notFounds {
			t.Errorf("%s calls timed: %v, want %d", c.side, timed, oks+notFounds)
		}
	}
	// Requests go in at the ingress and out at the egress; responses the
	// other way.
	for _, c := range []struct {
		m               *Metrics
		side, direction string
		want            int
	}{
		{imp, SideIngress, "in", reqBytes},
		{imp, SideIngress, "out", respBytes},
		{exp, SideEgress, "out", reqBytes},
		{exp, SideEgress, "in", respBytes},
	} {
		if got := bytesSeries(t, c.m, c.side, c.direction); got != float64(c.want) {
			t.Errorf("%s bytes %s: %v, want %d", c.side, c.direction, got, c.want)
		}
	}

	// A stream in flight counts on both sides until the app cancels it.
	sctx, scancel := context.WithCancel(ctx)
	defer scancel()
	stream, err := p.client.FullDuplexCall(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&testgrpc.StreamingOutputCallRequest{ResponseParameters: []*testgrpc.ResponseParameters{{Size: 10}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	if in, out := inFlight(t, imp, SideIngress), inFlight(t, exp, SideEgress); in != 1 || out != 1 {
		t.Errorf("in flight with a stream open: ingress %v, egress %v; want 1, 1", in, out)
	}
	if n := p.exporter.egressInflight.Load(); n != 1 {
		t.Errorf("egress calls the drain waits for with a stream open: %d, want 1", n)
	}
	scancel()
	const duplex = "/grpc.testing.TestService/FullDuplexCall"
	deadline := time.Now().Add(20 * time.Second)
	for {
		in, _ := callSeries(t, imp, SideIngress, duplex, "Canceled")
		out, _ := callSeries(t, exp, SideEgress, duplex, "Canceled")
		flying := inFlight(t, imp, SideIngress) + inFlight(t, exp, SideEgress) + float64(p.exporter.egressInflight.Load())
		if in == 1 && out == 1 && flying == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the cancel: canceled ingress %v, egress %v; in flight %v; want 1, 1, 0", in, out, flying)
		}
		time.Sleep(5 * time.Millisecond) // polling interval
	}
}

// TestMethodLabelsBounded: a side gives at most maxMethodLabels methods a
// series of their own; the calls of any further method count under
// "other". The other side's bound is its own.
func TestMethodLabelsBounded(t *testing.T) {
	m := NewMetrics()
	const extra = 10
	for i := range maxMethodLabels + extra {
		for range 2 {
			ms := m.ingress.series(fmt.Sprintf("/s.S/M%d", i))
			ms.end(ms.begin(), nil)
		}
	}
	ms := m.egress.series("/s.S/M0")
	ms.end(ms.begin(), status.Error(codes.Unavailable, "x"))

	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	ingressSeries := 0
	for _, f := range families {
		if f.GetName() != "vatcar_grpc_calls_total" {
			continue
		}
		for _, s := range f.GetMetric() {
			if s.GetLabel()[2].GetValue() == SideIngress { // labels sort: code, method, side
				ingressSeries++
			}
		}
	}
	if ingressSeries != maxMethodLabels+1 {
		t.Errorf("ingress call series: %d, want %d (and one for other)", ingressSeries, maxMethodLabels+1)
	}
	for _, c := range []struct {
		side, method, code string
		want               float64
	}{
		{SideIngress, "/s.S/M0", "OK", 2},
		{SideIngress, fmt.Sprintf("/s.S/M%d", maxMethodLabels-1), "OK", 2},
		{SideIngress, "other", "OK", 2 * extra},
		{SideEgress, "/s.S/M0", "Unavailable", 1},
	} {
		calls, timed := callSeries(t, m, c.side, c.method, c.code)
		if calls != c.want || timed != c.want {
			t.Errorf("%s %s %s: %v calls, %v timed; want %v", c.side, c.method, c.code, calls, timed, c.want)
		}
	}
	if _, ok := seriesValue(t, m, "vatcar_grpc_calls_total", map[string]string{"method": fmt.Sprintf("/s.S/M%d", maxMethodLabels)}); ok {
		t.Errorf("method %d past the bound has a series of its own", maxMethodLabels)
	}
	if in, out := inFlight(t, m, SideIngress), inFlight(t, m, SideEgress); in != 0 || out != 0 {
		t.Errorf("in flight after every call ended: %v, %v; want 0, 0", in, out)
	}
}

// TestCallCode: a call's code is what the client gets, as grpc-go's server
// turns a handler's error into a status.
func TestCallCode(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want codes.Code
	}{
		{"nil", nil, codes.OK},
		{"status", status.Error(codes.NotFound, "x"), codes.NotFound},
		{"status unknown", status.Error(codes.Unknown, "x"), codes.Unknown},
		{"wrapped status", fmt.Errorf("a: %w", status.Error(codes.Aborted, "x")), codes.Aborted},
		{"canceled", context.Canceled, codes.Canceled},
		{"wrapped deadline", fmt.Errorf("a: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{"plain", errors.New("x"), codes.Unknown},
		{"beyond the known codes", status.Error(codes.Code(42), "x"), codes.Code(42)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := callCode(tc.err); got != tc.want {
				t.Errorf("callCode(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
	m := NewMetrics()
	ms := m.ingress.series("/s.S/M")
	ms.end(ms.begin(), status.Error(codes.Code(42), "x"))
	if calls, _ := callSeries(t, m, SideIngress, "/s.S/M", "Code(42)"); calls != 1 {
		t.Errorf("a call ending with code 42: %v counted, want 1", calls)
	}
}

// TestCallContext: a call's context carries its rpcInfo and its parent's
// values, and contexts derived from it end with the parent.
func TestCallContext(t *testing.T) {
	type key struct{}
	parent, cancel := context.WithCancel(context.WithValue(context.Background(), key{}, "v"))
	c := &callContext{Context: parent}
	if info, _ := c.Value(rpcKey{}).(*rpcInfo); info != &c.info {
		t.Errorf("rpcInfo %p, want the call's %p", info, &c.info)
	}
	if v := c.Value(key{}); v != "v" {
		t.Errorf("parent's value %v, want v", v)
	}
	child, stop := context.WithCancel(c)
	defer stop()
	fired := make(chan struct{})
	context.AfterFunc(c, func() { close(fired) })
	cancel()
	select {
	case <-child.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("a context derived from the call's did not end with its parent")
	}
	select {
	case <-fired:
	case <-time.After(10 * time.Second):
		t.Fatal("AfterFunc on the call's context did not run when its parent ended")
	}
}

// TestAppConnIdentity: each connection an appListener accepts, over TCP
// or a Unix socket, has a remote address of its own (appConnOf's identity
// of the app connection), which prints as the address it wraps.
func TestAppConnIdentity(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			addr := "127.0.0.1:0"
			if network == "unix" {
				addr = filepath.Join(shortTempDir(t), "s")
			}
			ln, err := net.Listen(network, addr)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			app := appListener{ln}
			var addrs []net.Addr
			for range 2 {
				c, err := net.Dial(network, ln.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				s, err := app.Accept()
				if err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				a, ok := s.RemoteAddr().(*appAddr)
				if !ok {
					t.Fatalf("remote address %T, want *appAddr", s.RemoteAddr())
				}
				if network == "tcp" && a.String() != c.LocalAddr().String() {
					t.Errorf("remote address prints %q, want the client's %q", a.String(), c.LocalAddr().String())
				}
				if a.Network() != network && a.Network() != "unknown" {
					t.Errorf("network %q, want %q", a.Network(), network)
				}
				ctx := peer.NewContext(context.Background(), &peer.Peer{Addr: s.RemoteAddr()})
				if got := appConnOf(ctx); got != any(a) {
					t.Errorf("appConnOf = %v, want the connection's address", got)
				}
				addrs = append(addrs, a)
			}
			if addrs[0] == addrs[1] {
				t.Error("two connections share one identity")
			}
		})
	}
	if got := appConnOf(context.Background()); got != nil {
		t.Errorf("appConnOf without a peer = %v, want nil", got)
	}
}
