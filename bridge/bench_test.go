package bridge

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc"
	"google.golang.org/grpc"

	"github.com/vatcar/vatcar/internal/cputime"
	"github.com/vatcar/vatcar/proto/captp"
)

// The benchmarks run the same calls directly against the backend and
// through one bridge (ingress -> capnp over loopback TCP -> egress), so their
// ratio is the bridge's cost. Compare with
//
//	go test -run '^$' -bench . -benchmem ./bridge/

const benchMsgSize = 1 << 10

// benchTargets returns the direct and bridged addresses of one backend.
func benchTargets(b *testing.B) (backend *backend, h *hop) {
	backend = newBackend(b)
	h = newHop(b, backend.addr, hopConfig{ingress: IngressConfig{MaxMessageSize: 64 << 20}})
	return backend, h
}

func BenchmarkUnary(b *testing.B) {
	be, h := benchTargets(b)
	for _, target := range []struct{ name, addr string }{{"direct", be.addr}, {"bridge", h.addr}} {
		cc := dial(b, target.addr)
		msg := pattern(benchMsgSize)
		b.Run(target.name, func(b *testing.B) {
			b.SetBytes(benchMsgSize)
			before, wholeBefore := h.in.unaryCalls.Load(), h.eg.wholeReplies.Load()
			for b.Loop() {
				var got []byte
				if err := cc.Invoke(context.Background(), "/t.T/Echo", msg, &got, grpc.ForceCodecV2(Codec())); err != nil {
					b.Fatal(err)
				}
			}
			if target.name == "bridge" {
				b.ReportMetric(float64(h.in.unaryCalls.Load()-before)/float64(b.N), "unary/op")
				b.ReportMetric(float64(h.eg.wholeReplies.Load()-wholeBefore)/float64(b.N), "whole/op")
			}
		})
		b.Run(target.name+"-parallel64", func(b *testing.B) {
			b.SetBytes(benchMsgSize)
			b.SetParallelism(32) // 64 in flight on 2 CPUs
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					var got []byte
					if err := cc.Invoke(context.Background(), "/t.T/Echo", msg, &got, grpc.ForceCodecV2(Codec())); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkUnaryKinds compares unary calls through a bridge that does not
// know the method's kind (the general path) with one that knows it is
// unary (the fast path), to one backend in the same process. cpu-us/op is
// the whole process's CPU per call (client, bridge and backend), which a
// busy machine disturbs less than the time per call. Compare the two with
//
//	go test -run '^$' -bench UnaryKinds -count 6 ./bridge/ > /tmp/k.txt
//	benchstat -col /kinds /tmp/k.txt
func BenchmarkUnaryKinds(b *testing.B) {
	be := newBackend(b)
	hops := []struct {
		name string
		h    *hop
	}{
		{"none", newHop(b, be.addr, hopConfig{})},
		{"unary", knownHop(b, be.addr, Kinds{"/t.T/Echo": KindUnary}, hopConfig{})},
	}
	msg := pattern(benchMsgSize)
	call := func(cc *grpc.ClientConn) error {
		var got []byte
		return cc.Invoke(context.Background(), "/t.T/Echo", msg, &got, grpc.ForceCodecV2(Codec()))
	}
	for _, mode := range []string{"serial", "parallel64"} {
		for _, hp := range hops {
			cc := dial(b, hp.h.addr)
			if err := call(cc); err != nil {
				b.Fatal(err)
			}
			b.Run("kinds="+hp.name+"/"+mode, func(b *testing.B) {
				b.SetBytes(benchMsgSize)
				known, cpu := hp.h.in.knownUnaryCalls.Load(), cputime.Start()
				if mode == "serial" {
					for b.Loop() {
						if err := call(cc); err != nil {
							b.Fatal(err)
						}
					}
				} else {
					b.SetParallelism(32) // 64 in flight on 2 CPUs
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							if err := call(cc); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				b.ReportMetric(float64(hp.h.in.knownUnaryCalls.Load()-known)/float64(b.N), "known/op")
				b.ReportMetric(cpu.MicrosPer(float64(b.N)), "cpu-us/op")
			})
		}
	}
}

func BenchmarkStream(b *testing.B) {
	be, h := benchTargets(b)
	for _, target := range []struct{ name, addr string }{{"direct", be.addr}, {"bridge", h.addr}} {
		cc := dial(b, target.addr)
		msg := pattern(benchMsgSize)
		// Client streaming: b.N messages up, one answer.
		b.Run(target.name+"-up", func(b *testing.B) {
			b.SetBytes(benchMsgSize)
			s := rawStream(context.Background(), b, cc, "/t.T/Hash")
			for b.Loop() {
				if err := s.SendMsg(msg); err != nil {
					b.Fatal(err)
				}
			}
			s.CloseSend()
			if got, err := recvAll(s); err != nil || len(got) != 1 {
				b.Fatalf("Hash: %v", err)
			}
		})
		// Server streaming: one request, b.N messages down.
		b.Run(target.name+"-down", func(b *testing.B) {
			b.SetBytes(benchMsgSize)
			s := rawStream(context.Background(), b, cc, "/t.T/Flood")
			req := binary.BigEndian.AppendUint64(nil, uint64(b.N))
			s.SendMsg(binary.BigEndian.AppendUint64(req, benchMsgSize))
			s.CloseSend()
			n := 0
			for {
				var m []byte
				err := s.RecvMsg(&m)
				if err == io.EOF {
					break
				}
				if err != nil {
					b.Fatal(err)
				}
				n++
			}
			if n != b.N {
				b.Fatalf("got %d messages, want %d", n, b.N)
			}
		})
		// Ping-pong: one message up and its echo down, b.N times.
		b.Run(target.name+"-pingpong", func(b *testing.B) {
			s := rawStream(context.Background(), b, cc, "/t.T/Echo")
			for b.Loop() {
				if err := s.SendMsg(msg); err != nil {
					b.Fatal(err)
				}
				var m []byte
				if err := s.RecvMsg(&m); err != nil {
					b.Fatal(err)
				}
			}
			s.CloseSend()
			recvAll(s)
		})
	}
}

// BenchmarkCapnpFloor is one GrpcService.unary call with a 1 KiB request
// to a server that answers at once, over a loopback TCP go-capnp
// connection: the floor under a bridged unary call, which adds two gRPC hops
// to it.
func BenchmarkCapnpFloor(b *testing.B) {
	svc := captp.GrpcService(capnpPair(b, capnp.Client(captp.GrpcService_ServerToClient(floorServer{}))))
	req := pattern(benchMsgSize)
	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			floorCall(b, svc, req)
		}
	})
	b.Run("parallel64", func(b *testing.B) {
		b.SetParallelism(32)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				floorCall(b, svc, req)
			}
		})
	})
}

func floorCall(b *testing.B, svc captp.GrpcService, req []byte) {
	f, release := svc.Unary(context.Background(), func(p captp.GrpcService_unary_Params) error {
		return p.SetRequest(req)
	})
	defer release()
	if _, err := f.Struct(); err != nil {
		b.Error(err)
	}
}

// floorServer answers every unary call at once, concurrently, with an
// empty reply.
type floorServer struct{}

func (floorServer) Unary(_ context.Context, call captp.GrpcService_unary) error {
	call.Go()
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	_, err = res.NewReply()
	return err
}

func (floorServer) Open(context.Context, captp.GrpcService_open) error { return nil }

// capnpPair connects two go-capnp Conns over loopback TCP, serving
// bootstrap on one; it returns the other's bootstrap client. Everything
// closes at the end of the benchmark.
func capnpPair(b *testing.B, bootstrap capnp.Client) capnp.Client {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	accepted := make(chan *rpc.Conn, 1)
	go func() {
		nc, err := ln.Accept()
		ln.Close()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- rpc.NewConn(rpc.NewStreamTransport(nc), &rpc.Options{BootstrapClient: bootstrap})
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	client := rpc.NewConn(rpc.NewStreamTransport(nc), nil)
	server := <-accepted
	boot := client.Bootstrap(context.Background())
	b.Cleanup(func() {
		boot.Release()
		client.Close()
		server.Close()
	})
	return boot
}
