package bridge

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vatcar/vatcar/proto/captp"
)

// hop is one bridge: an ingress gRPC server whose calls cross a real
// go-capnp connection over loopback TCP to an egress that calls a backend.
type hop struct {
	addr   string // the ingress's gRPC address
	svc    captp.GrpcService
	in     *Ingress
	eg     *egress
	client *rpc.Conn // the ingress side of the capnp connection
}

// hopConfig adjusts a hop.
type hopConfig struct {
	ingress    IngressConfig
	egress     EgressConfig
	serverOpts []grpc.ServerOption // for the ingress's grpc.Server
	dialOpts   []grpc.DialOption   // for the egress's connection to the backend
}

// newHop bridges to the gRPC server at backend. Everything it starts stops
// at the end of the test.
func newHop(t testing.TB, backend string, cfg hopConfig) *hop {
	t.Helper()
	cc, err := grpc.NewClient(backend, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, cfg.dialOpts...)...)
	if err != nil {
		t.Fatalf("dial backend: %v", err)
	}
	t.Cleanup(func() { cc.Close() })
	cfg.egress.Conn = cc
	// go-capnp's errors (why a connection ended, above all) go to the
	// test's log.
	reporter := &testReporter{t: t}
	t.Cleanup(reporter.stop) // the last cleanup: nothing is logged after it
	egImpl, err := newEgress(cfg.egress)
	if err != nil {
		t.Fatalf("newEgress: %v", err)
	}
	eg := newService(egImpl)
	t.Cleanup(eg.Release)

	// The egress side of the capnp connection.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan *rpc.Conn, 1)
	go func() {
		nc, err := ln.Accept()
		ln.Close()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- rpc.NewConn(rpc.NewStreamTransport(nc), &rpc.Options{BootstrapClient: capnp.Client(eg.AddRef()), Logger: reporter.side("egress")})
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	client := rpc.NewConn(rpc.NewStreamTransport(nc), &rpc.Options{Logger: reporter.side("ingress")})
	server := <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	svc := captp.GrpcService(client.Bootstrap(ctx))
	if err := svc.Resolve(ctx); err != nil {
		t.Fatalf("bootstrap: %v", err)
	}

	cfg.ingress.Director = func(context.Context, string) (captp.GrpcService, error) { return svc.AddRef(), nil }
	in, err := NewIngress(cfg.ingress)
	if err != nil {
		t.Fatalf("NewIngress: %v", err)
	}
	t.Cleanup(in.Close) // after the server stops (cleanups run last first)
	gs := in.NewServer(append([]grpc.ServerOption{grpc.InTapHandle(in.TapHandle(nil))}, cfg.serverOpts...)...)
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(gl)
	t.Cleanup(func() {
		gs.Stop()
		svc.Release()
		client.Close()
		server.Close()
	})
	return &hop{addr: gl.Addr().String(), svc: svc, in: in, eg: egImpl, client: client}
}

// serve runs a gRPC server on loopback until the end of the test.
func serve(t testing.TB, register func(*grpc.Server), opts ...grpc.ServerOption) string {
	t.Helper()
	s := grpc.NewServer(opts...)
	register(s)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return l.Addr().String()
}

// dial returns a client of the gRPC server at addr, closed at the end of the
// test.
func dial(t testing.TB, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// recordCalls makes in keep every call it bridges; the function returned
// gives them so far, in the order they came.
func recordCalls(in *Ingress) func() []*ingressCall {
	var (
		mu    sync.Mutex
		calls []*ingressCall
	)
	in.onCall = func(c *ingressCall) {
		mu.Lock()
		calls = append(calls, c)
		mu.Unlock()
	}
	return func() []*ingressCall {
		mu.Lock()
		defer mu.Unlock()
		return append([]*ingressCall(nil), calls...)
	}
}

// testReporter logs a go-capnp connection's warnings and errors (why it
// ended, above all) to the test until stop.
type testReporter struct {
	t       testing.TB
	mu      sync.Mutex
	stopped bool // guarded by mu: set by stop, after which nothing is logged
}

func (r *testReporter) stop() {
	r.mu.Lock()
	r.stopped = true
	r.mu.Unlock()
}

// side returns the rpc.Logger of one side's connection.
func (r *testReporter) side(name string) rpc.Logger { return sideReporter{r, name} }

type sideReporter struct {
	r    *testReporter
	name string
}

func (s sideReporter) log(level, msg string, args []any) {
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	if !s.r.stopped {
		s.r.t.Logf("go-capnp %s connection %s: %s %v", s.name, level, msg, args)
	}
}

func (sideReporter) Debug(string, ...any)            {}
func (sideReporter) Info(string, ...any)             {}
func (s sideReporter) Warn(msg string, args ...any)  { s.log("warn", msg, args) }
func (s sideReporter) Error(msg string, args ...any) { s.log("error", msg, args) }
