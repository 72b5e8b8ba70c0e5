package bridge

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/vatcar/vatcar/internal/testnet"
	"github.com/vatcar/vatcar/proto/captp"
	"github.com/vatcar/vatcar/vat/engine"
)

// engineHop is a hop whose capnp connection is the engine's on both
// sides, as between two sidecars: the ingress's unary calls take
// engine.CallDirect's direct path.
type engineHop struct {
	addr     string
	in       *Ingress
	client   *engine.Conn // the ingress side
	serverNC net.Conn     // the egress side's socket
}

func newEngineHop(t testing.TB, backend string, cfg hopConfig) *engineHop {
	t.Helper()
	cc := dial(t, backend, cfg.dialOpts...)
	cfg.egress.Conn = cc
	egImpl, err := newEgress(cfg.egress)
	if err != nil {
		t.Fatalf("newEgress: %v", err)
	}
	eg := newService(egImpl)
	t.Cleanup(eg.Release)
	nc, snc := testnet.Pair(t, "tcp")
	server := engine.NewConn(engine.NewStreamCodec(snc, 0), &engine.Options{Bootstrap: capnp.Client(eg.AddRef())})
	client := engine.NewConn(engine.NewStreamCodec(nc, 0), nil)
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
	return &engineHop{addr: gl.Addr().String(), in: in, client: client, serverNC: snc}
}

// detailsBackend serves /t.T/Details: a status with details, headers and
// trailers.
func detailsBackend(t testing.TB) string {
	return serve(t, func(*grpc.Server) {}, grpc.ForceServerCodecV2(Codec()), grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
		var m []byte
		if err := ss.RecvMsg(&m); err != nil {
			return err
		}
		if err := ss.SendHeader(metadata.Pairs("x-hdr", "h")); err != nil {
			return err
		}
		ss.SetTrailer(metadata.Pairs("x-trl", "t"))
		st, err := status.New(codes.FailedPrecondition, "bad: "+string(m)).WithDetails(wrapperspb.String("why"))
		if err != nil {
			return err
		}
		return st.Err()
	}))
}

var directKinds = Kinds{
	"/t.T/Echo": KindUnary, "/t.T/Fail": KindUnary, "/t.T/Hang": KindUnary,
	"/t.T/Details": KindUnary, "/t.T/Produce": KindUnary,
}

// outcome is what a gRPC client sees of a unary call.
type outcome struct {
	reply            string
	header, trailer  metadata.MD
	code             codes.Code
	message, details string
}

func unaryOutcome(ctx context.Context, cc *grpc.ClientConn, method string, req []byte, opts ...grpc.CallOption) outcome {
	var got []byte
	var o outcome
	err := cc.Invoke(ctx, method, req, &got, append([]grpc.CallOption{grpc.ForceCodecV2(Codec()), grpc.Header(&o.header), grpc.Trailer(&o.trailer)}, opts...)...)
	o.reply = string(got)
	st := status.Convert(err)
	o.code, o.message = st.Code(), st.Message()
	for _, d := range st.Details() {
		if s, ok := d.(*wrapperspb.StringValue); ok {
			o.details += s.GetValue()
		}
	}
	return o
}

// TestIngressDirectUnary: through an engine hop the ingress's unary calls
// take the direct path, and the client sees what it sees through a go-capnp
// hop (the normal path): replies, headers, trailers, codes, messages and
// details.
func TestIngressDirectUnary(t *testing.T) {
	be := newBackend(t)
	dbe := detailsBackend(t)
	cfg := hopConfig{ingress: IngressConfig{Kinds: directKinds}}
	eh, gh := newEngineHop(t, be.addr, cfg), newHop(t, be.addr, cfg)
	deh, dgh := newEngineHop(t, dbe, cfg), newHop(t, dbe, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	failCtx := metadata.AppendToOutgoingContext(ctx, "x-code", "5", "x-message-bin", "gone", "x-send-headers", "1")
	cases := []struct {
		name, method string
		ctx          context.Context
		req          []byte
		engine, gocp string
		want         codes.Code
	}{
		{"echo", "/t.T/Echo", ctx, []byte("hello"), eh.addr, gh.addr, codes.OK},
		{"echo-large", "/t.T/Echo", ctx, pattern(64 << 10), eh.addr, gh.addr, codes.OK},
		{"fail", "/t.T/Fail", failCtx, []byte("x"), eh.addr, gh.addr, codes.NotFound},
		{"details", "/t.T/Details", ctx, []byte("x"), deh.addr, dgh.addr, codes.FailedPrecondition},
	}
	for _, tc := range cases {
		before := eh.in.directCalls.Load() + deh.in.directCalls.Load()
		got := unaryOutcome(tc.ctx, dial(t, tc.engine), tc.method, tc.req)
		if n := eh.in.directCalls.Load() + deh.in.directCalls.Load() - before; n != 1 {
			t.Errorf("%s: %d direct calls, want 1", tc.name, n)
		}
		want := unaryOutcome(tc.ctx, dial(t, tc.gocp), tc.method, tc.req)
		if got.code != tc.want || got.code != want.code || got.message != want.message || got.details != want.details ||
			got.reply != want.reply || len(got.header) != len(want.header) || first(got.header["x-hdr"]) != first(want.header["x-hdr"]) ||
			first(got.trailer["x-trl"]) != first(want.trailer["x-trl"]) || first(got.trailer["x-echo-count"]) != first(want.trailer["x-echo-count"]) {
			t.Errorf("%s: engine hop %+v, go-capnp hop %+v", tc.name, got, want)
		}
	}
	if n := gh.in.directCalls.Load() + dgh.in.directCalls.Load(); n != 0 {
		t.Errorf("%d direct calls through go-capnp hops, want 0 (the fallback)", n)
	}
}

// TestIngressDirectDeadlineAndCancel: a deadline and a client's cancel end
// a direct call as they end a normal one: DEADLINE_EXCEEDED and CANCELLED,
// and the backend's call is cancelled.
func TestIngressDirectDeadlineAndCancel(t *testing.T) {
	be := newBackend(t)
	eh := newEngineHop(t, be.addr, hopConfig{ingress: IngressConfig{Kinds: directKinds}})
	cc := dial(t, eh.addr)
	mustDirect(t, eh, cc)

	dctx, dcancel := context.WithTimeout(context.Background(), 2*time.Second) // time to reach the backend, even on a busy machine
	defer dcancel()
	if o := unaryOutcome(dctx, cc, "/t.T/Hang", []byte("x")); o.code != codes.DeadlineExceeded {
		t.Fatalf("deadline: %+v", o)
	}
	select {
	case <-be.started:
		if err := waitEnded(t, be); err == nil {
			t.Fatal("backend call not ended by the deadline")
		}
	case <-time.After(30 * time.Second):
		// The deadline passed before the call reached the backend.
	}

	cctx, ccancel := context.WithCancel(context.Background())
	done := make(chan outcome, 1)
	go func() { done <- unaryOutcome(cctx, cc, "/t.T/Hang", []byte("x")) }()
	waitStarted(t, be)
	ccancel()
	if o := <-done; o.code != codes.Canceled {
		t.Fatalf("cancel: %+v", o)
	}
	if err := waitEnded(t, be); err != context.Canceled {
		t.Fatalf("backend call ended with %v, want context.Canceled", err)
	}
	poll(t, func() bool { return eh.client.Stats().Questions == 0 }, "the ingress side's questions freed")
}

// mustDirect checks that a unary call through eh takes the direct path (a
// failed call does not say which path it took).
func mustDirect(t *testing.T, eh *engineHop, cc *grpc.ClientConn) {
	t.Helper()
	before := eh.in.directCalls.Load()
	if o := unaryOutcome(context.Background(), cc, "/t.T/Echo", []byte("x")); o.code != codes.OK || o.reply != "x" {
		t.Fatalf("echo: %+v", o)
	}
	if eh.in.directCalls.Load() != before+1 {
		t.Fatal("the echo did not take the direct path")
	}
}

// TestIngressDirectConnectionLost: the CapTP connection breaks under a
// direct call: the client gets UNAVAILABLE.
func TestIngressDirectConnectionLost(t *testing.T) {
	be := newBackend(t)
	eh := newEngineHop(t, be.addr, hopConfig{ingress: IngressConfig{Kinds: directKinds}})
	cc := dial(t, eh.addr)
	mustDirect(t, eh, cc)
	done := make(chan outcome, 1)
	go func() { done <- unaryOutcome(context.Background(), cc, "/t.T/Hang", []byte("x")) }()
	waitStarted(t, be)
	eh.serverNC.Close()
	select {
	case o := <-done:
		if o.code != codes.Unavailable {
			t.Fatalf("call under a lost connection: %+v, want UNAVAILABLE", o)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the call did not end with its connection")
	}
}

// TestIngressDirectStreamedReply: a reply that streams (the results hold
// rest, a Call capability) works on the direct path.
func TestIngressDirectStreamedReply(t *testing.T) {
	be := newBackend(t)
	eh := newEngineHop(t, be.addr, hopConfig{ingress: IngressConfig{Kinds: directKinds}})
	cc := dial(t, eh.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sizes := []int{10, 70 << 10, 3, 0, 1 << 10}
	req := make([]byte, 0, 8*len(sizes))
	for _, n := range sizes {
		req = binary.BigEndian.AppendUint64(req, uint64(n))
	}
	s, err := cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/t.T/Produce", grpc.ForceCodecV2(Codec()))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SendMsg(req); err != nil {
		t.Fatal(err)
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	for i, n := range sizes {
		var m []byte
		if err := s.RecvMsg(&m); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if string(m) != string(pattern(n)) {
			t.Fatalf("message %d: %d bytes, want pattern(%d)", i, len(m), n)
		}
	}
	var m []byte
	if err := s.RecvMsg(&m); err != io.EOF {
		t.Fatalf("after the messages: %v, want io.EOF", err)
	}
	if n := eh.in.directCalls.Load(); n != 1 {
		t.Fatalf("%d direct calls, want 1", n)
	}
	poll(t, func() bool {
		st := eh.client.Stats()
		return st.Questions == 0 && st.Imports == 1 // the bootstrap's
	}, "the ingress side's tables empty")
}

// TestUnaryCallShape: the method and params size the ingress gives
// engine.CallDirect are the generated client's.
func TestUnaryCallShape(t *testing.T) {
	_, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		t.Fatal(err)
	}
	p, err := captp.NewGrpcService_unary_Params(seg)
	if err != nil {
		t.Fatal(err)
	}
	if got := capnp.Struct(p).Size(); got != unaryParamsSize {
		t.Errorf("unary params: generated size %v, ingress's %v", got, unaryParamsSize)
	}
	if m := serviceMethods[0].Method; m.InterfaceID != captp.GrpcService_TypeID || m.MethodID != 0 || m.MethodName != "unary" {
		t.Errorf("serviceMethods[0] = %v, want GrpcService.unary", m.String())
	}
}
