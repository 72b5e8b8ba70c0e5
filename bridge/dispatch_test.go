package bridge

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	"capnproto.org/go/capnp/v3/rpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/vatcar/vatcar/internal/cputime"
	"github.com/vatcar/vatcar/proto/captp"
)

// TestServiceDescriptors checks the dispatcher's tables against the
// generated code: method ids, names and result sizes.
func TestServiceDescriptors(t *testing.T) {
	for i, m := range serviceMethods {
		if m.InterfaceID != captp.GrpcService_TypeID || int(m.MethodID) != i {
			t.Errorf("serviceMethods[%d] = %v, want method %d of GrpcService", i, m.Method, i)
		}
	}
	if len(serviceMethods) != len(serviceHandlers) {
		t.Errorf("%d methods, %d handlers", len(serviceMethods), len(serviceHandlers))
	}
	_, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		t.Fatal(err)
	}
	u, err := captp.NewGrpcService_unary_Results(seg)
	if err != nil {
		t.Fatal(err)
	}
	o, err := captp.NewGrpcService_open_Results(seg)
	if err != nil {
		t.Fatal(err)
	}
	if got := capnp.Struct(u).Size(); got != unaryResultsSize {
		t.Errorf("unary results: generated size %v, dispatcher's %v", got, unaryResultsSize)
	}
	if got := capnp.Struct(o).Size(); got != openResultsSize {
		t.Errorf("open results: generated size %v, dispatcher's %v", got, openResultsSize)
	}
}

// TestServiceUnknownMethod calls methods GrpcService does not have, from
// this process and over a go-capnp connection, on the egress's capability
// and on a go-capnp server.Server: both fail alike, as Unimplemented.
func TestServiceUnknownMethod(t *testing.T) {
	e, err := newEgress(EgressConfig{Conn: dial(t, newBackend(t).addr)})
	if err != nil {
		t.Fatal(err)
	}
	ours := capnp.Client(newService(e))
	defer ours.Release()
	theirs := capnp.Client(captp.GrpcService_ServerToClient(goCapnpService{}))
	defer theirs.Release()
	unknown := []capnp.Method{
		{InterfaceID: captp.GrpcService_TypeID, MethodID: 2},
		{InterfaceID: captp.Sink_TypeID, MethodID: 0},
	}
	call := func(c capnp.Client, m capnp.Method) error {
		ans, release := c.SendCall(context.Background(), capnp.Send{Method: m})
		defer release()
		_, err := ans.Struct()
		return err
	}
	for _, remote := range []bool{false, true} {
		o, th := ours, theirs
		if remote {
			o, th = goCapnpPair(t, ours.AddRef()), goCapnpPair(t, theirs.AddRef())
		}
		for _, m := range unknown {
			t.Run(fmt.Sprintf("remote=%v/%x.%d", remote, m.InterfaceID, m.MethodID), func(t *testing.T) {
				got, want := call(o, m), call(th, m)
				if exc.TypeOf(got) != exc.Unimplemented || got == nil || want == nil || got.Error() != want.Error() {
					t.Errorf("got %v (%v), want %v (%v)", got, exc.TypeOf(got), want, exc.TypeOf(want))
				}
			})
		}
	}
}

// goCapnpService is a GrpcService served by go-capnp's server.Server. Its
// unary runs the unary field, if set.
type goCapnpService struct {
	unary func(captp.GrpcService_unary) error
}

func (s goCapnpService) Unary(_ context.Context, call captp.GrpcService_unary) error {
	if s.unary == nil {
		return nil
	}
	return s.unary(call)
}
func (goCapnpService) Open(context.Context, captp.GrpcService_open) error { return nil }

// goCapnpPair serves bootstrap (taken) over a loopback go-capnp
// connection and returns the other side's bootstrap client; all closes at
// the end of the test.
func goCapnpPair(t *testing.T, bootstrap capnp.Client) capnp.Client {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan *rpc.Conn, 1)
	go func() {
		defer ln.Close()
		nc, err := ln.Accept()
		if err != nil {
			bootstrap.Release()
			accepted <- nil
			return
		}
		accepted <- rpc.NewConn(rpc.NewStreamTransport(nc), &rpc.Options{BootstrapClient: bootstrap})
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	client := rpc.NewConn(rpc.NewStreamTransport(nc), nil)
	server := <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	c := client.Bootstrap(context.Background())
	t.Cleanup(func() {
		c.Release()
		client.Close()
		server.Close()
	})
	return c
}

// TestServiceLocal runs calls through an ingress whose capability is the
// egress's own, in this process: the dispatcher's Send, and calls
// pipelined on open's up Sink through its answer queue.
func TestServiceLocal(t *testing.T) {
	b := newBackend(t)
	svc, err := NewEgress(EgressConfig{Conn: dial(t, b.addr)})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Release()
	in, err := NewIngress(IngressConfig{Director: func(context.Context, string) (captp.GrpcService, error) { return svc.AddRef(), nil }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(in.Close) // after the server stops (cleanups run last first)
	cc := dial(t, serve(t, func(*grpc.Server) {}, in.ServerOptions()...))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, n := range []int{0, 1, 50} {
		t.Run(fmt.Sprint("bidi ", n, " msgs"), func(t *testing.T) { echoBidi(ctx, t, cc, testMessages(n)) })
	}
	t.Run("unary", func(t *testing.T) {
		got, err := invoke(ctx, cc, "/t.T/First", []byte("hello"))
		if err != nil || string(got) != "hello" {
			t.Errorf("got %q, %v; want hello", got, err)
		}
	})
}

// sinkLog is a target that records what reaches it, safe for concurrent
// use.
type sinkLog struct {
	mu     sync.Mutex
	events []string
}

func (s *sinkLog) add(e string) {
	s.mu.Lock()
	s.events = append(s.events, e)
	s.mu.Unlock()
}

func (s *sinkLog) header(md metadata.MD) error          { s.add("header " + first(md["k"])); return nil }
func (s *sinkLog) message(f *frame) error               { f.free(); s.add("message"); return nil }
func (s *sinkLog) end(st *status.Status, _ metadata.MD) { s.add("end") }
func (s *sinkLog) lost(error)                           {}
func (s *sinkLog) got() []string                        { s.mu.Lock(); defer s.mu.Unlock(); return s.events }

// TestCapCallPipelined pipelines calls on a call's results while its
// handler runs (early), and after it returned (the queue is then made and
// settled at once): they reach the results' capability in order once the
// handler returns, or fail with its error.
func TestCapCallPipelined(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	headers := func(up captp.Sink, v string) (captp.Sink_headers_Results_Future, capnp.ReleaseFunc) {
		return up.Headers(ctx, func(p captp.Sink_headers_Params) error {
			l, err := p.NewMd(1)
			if err != nil {
				return err
			}
			l.At(0).SetKey("k")
			return l.At(0).SetValue([]byte(v))
		})
	}
	errHandler := errors.New("handler failed")
	for _, early := range []bool{true, false} {
		for _, fail := range []bool{false, true} {
			t.Run(fmt.Sprintf("early=%v/fail=%v", early, fail), func(t *testing.T) {
				log := &sinkLog{}
				block := make(chan struct{})
				handle := func(_ *egress, _ context.Context, c *capCall) error {
					<-block
					if fail {
						return errHandler
					}
					res, err := openCall{c}.AllocResults()
					if err != nil {
						return err
					}
					return res.SetUp(newSink(log, 1<<20, DefaultMaxMetadataSize, nil))
				}
				ret := new(capnp.StructReturner)
				c := &capCall{recv: capnp.Recv{Method: serviceMethods[1].Method, ReleaseArgs: func() {}, Returner: ret}}
				ans, release := ret.Answer(c.recv.Method, c)
				defer release()
				var (
					futs []captp.Sink_headers_Results_Future
					want []string
				)
				call := func(up captp.Sink, v string) {
					f, r := headers(up, v)
					t.Cleanup(r)
					futs = append(futs, f)
					want = append(want, "header "+v)
				}
				up := captp.GrpcService_open_Results_Future{Future: ans.Future()}.Up()
				defer up.Release()
				if early { // queued: the handler has not returned
					call(up, "1")
					call(up, "2")
				}
				served := make(chan struct{})
				go func() {
					defer close(served)
					c.serve(ctx, nil, handle)
				}()
				close(block)
				<-served
				late := captp.Sink(capnp.NewPromise(c.recv.Method, c, nil).Answer().Field(0, nil).Client())
				defer late.Release()
				call(late, "3")
				for i, f := range futs {
					select {
					case <-f.Done():
					case <-ctx.Done():
						t.Fatalf("call %d never returned", i)
					}
					_, err := f.Struct()
					if fail && !errors.Is(err, errHandler) {
						t.Errorf("call %d: %v, want %v", i, err, errHandler)
					}
					if !fail && err != nil {
						t.Errorf("call %d: %v", i, err)
					}
				}
				if !fail && fmt.Sprint(log.got()) != fmt.Sprint(want) {
					t.Errorf("sink got %v, want %v", log.got(), want)
				}
			})
		}
	}
}

// BenchmarkDispatch is one received call, from Recv to Return, with a
// handler that answers at once (results allocated, a reply set): go-capnp's
// server.Server (its handler calls Go, as the egress's did) against the
// bridge's own dispatch, with a goroutine per call (direct) or the
// egress's workers (pooled). serial waits for each call to return; parallel
// keeps 32 per core in flight.
func BenchmarkDispatch(b *testing.B) {
	reply := func(res captp.GrpcService_unary_Results, err error) error {
		if err != nil {
			return err
		}
		_, err = res.NewReply()
		return err
	}
	srv := captp.GrpcService_NewServer(goCapnpService{unary: func(call captp.GrpcService_unary) error {
		call.Go()
		return reply(call.AllocResults())
	}})
	defer srv.Shutdown()
	direct := func(_ *egress, _ context.Context, c *capCall) error {
		return reply(unaryCall{c}.AllocResults())
	}
	m := serviceMethods[0].Method
	ctx := context.Background()
	pool := newWorkers()
	defer pool.close()
	for _, d := range []struct {
		name string
		recv func(capnp.Recv)
	}{
		{"server.Server", func(r capnp.Recv) { srv.Recv(ctx, r) }},
		{"direct", func(r capnp.Recv) { startCall(ctx, r, nil, nil, direct) }},
		{"pooled", func(r capnp.Recv) { startCall(ctx, r, pool, nil, direct) }},
	} {
		call := func() {
			ret := &doneReturner{done: make(chan struct{})}
			d.recv(capnp.Recv{Method: m, ReleaseArgs: func() {}, Returner: ret})
			<-ret.done
		}
		b.Run(d.name+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			cpu := cputime.Start()
			for b.Loop() {
				call()
			}
			b.ReportMetric(cpu.MicrosPer(float64(b.N)), "cpu-us/op")
		})
		b.Run(d.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(32)
			cpu := cputime.Start()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					call()
				}
			})
			b.ReportMetric(cpu.MicrosPer(float64(b.N)), "cpu-us/op")
		})
	}
}

// doneReturner is a capnp.Returner whose Return closes done. Its results
// live in a message of their own, released by ReleaseResults.
type doneReturner struct {
	done    chan struct{}
	results capnp.Struct
}

func (r *doneReturner) AllocResults(sz capnp.ObjectSize) (capnp.Struct, error) {
	_, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		return capnp.Struct{}, err
	}
	r.results, err = capnp.NewRootStruct(seg, sz)
	return r.results, err
}
func (r *doneReturner) PrepareReturn(error) {}
func (r *doneReturner) Return()             { close(r.done) }
func (r *doneReturner) ReleaseResults() {
	if msg := r.results.Message(); msg != nil {
		msg.Release()
	}
}

// TestIngressMalformedReply: a unary Return of empty results (what a
// go-capnp peer sends for a call that fails while its connection closes)
// or of a reply without its status fails the gRPC call as INTERNAL; it
// does not pass for an OK call with no response.
func TestIngressMalformedReply(t *testing.T) {
	for _, tc := range []struct {
		name  string
		unary func(captp.GrpcService_unary) error
	}{
		{"empty results", func(call captp.GrpcService_unary) error {
			_, err := call.AllocResults()
			return err
		}},
		{"reply without status", func(call captp.GrpcService_unary) error {
			res, err := call.AllocResults()
			if err != nil {
				return err
			}
			r, err := res.NewReply()
			if err != nil {
				return err
			}
			return capnp.Struct(r).SetPtr(1, capnp.Ptr{}) // no message either
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc, _ := servePair(t, false, capnp.Client(captp.GrpcService_ServerToClient(goCapnpService{unary: tc.unary})))
			in, err := NewIngress(IngressConfig{
				Director: func(context.Context, string) (captp.GrpcService, error) { return svc.AddRef(), nil },
				Kinds:    Kinds{"/t.T/First": KindUnary}, // the unary path every time
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(in.Close) // after the server stops (cleanups run last first)
			cc := dial(t, serve(t, func(*grpc.Server) {}, in.ServerOptions()...))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			got, err := invoke(ctx, cc, "/t.T/First", []byte("hello"))
			if status.Code(err) != codes.Internal || !strings.Contains(err.Error(), "malformed reply") {
				t.Errorf("got %q, %v; want INTERNAL naming a malformed reply", got, err)
			}
		})
	}
}
