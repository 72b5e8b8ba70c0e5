package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc"
	"capnproto.org/go/capnp/v3/rpc/transport"

	"github.com/vatcar/vatcar/internal/cputime"
	"github.com/vatcar/vatcar/proto/captp"
)

// These benchmarks measure go-capnp's cost per bridged unary call over TLS on real
// sockets, with the transport codec as the variable: the lever of issue 7 that lives
// below the bridge. Run:
//
//	go test -run '^$' -bench CapnpUnary -benchtime 20000x ./bench/
//
// cpu-us/call is this process's user+system CPU (both vats) per call.

// echoService answers GrpcService.unary with the request as the reply.
type echoService struct{}

func (echoService) Unary(ctx context.Context, call captp.GrpcService_unary) error {
	call.Go()
	req, err := call.Args().Request()
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	reply, err := res.NewReply()
	if err != nil {
		return err
	}
	if err := reply.SetMessage_(req); err != nil {
		return err
	}
	reply.SetHasMessage(true)
	_, err = reply.NewStatus()
	return err
}

func (echoService) Open(context.Context, captp.GrpcService_open) error {
	return errors.New("open: not in this benchmark")
}

// capnpPair is a client and a server vat on one TLS connection.
type capnpPair struct {
	svc            captp.GrpcService
	client, server *rpc.Conn
}

func (p *capnpPair) Close() {
	p.svc.Release()
	_ = p.client.Close()
	<-p.server.Done()
}

// newCapnpPair connects two rpc.Conns over TLS 1.3 on 127.0.0.1, each side's transport
// built by newTransport.
func newCapnpPair(tb testing.TB, newTransport func(net.Conn) transport.Transport) *capnpPair {
	tb.Helper()
	certPEM, keyPEM, err := selfSigned()
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		tb.Fatal(err)
	}
	lis, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	if err != nil {
		tb.Fatal(err)
	}
	defer lis.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			close(accepted)
			return
		}
		// The dialer waits for the server's half of the handshake.
		if err := c.(*tls.Conn).Handshake(); err != nil {
			c.Close()
			close(accepted)
			return
		}
		accepted <- c
	}()
	cc, err := tls.Dial("tcp", lis.Addr().String(), &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err != nil {
		tb.Fatal(err)
	}
	sc, ok := <-accepted
	if !ok {
		tb.Fatal("accept failed")
	}
	p := &capnpPair{
		server: rpc.NewConn(newTransport(sc), &rpc.Options{
			BootstrapClient: capnp.Client(captp.GrpcService_ServerToClient(echoService{})),
		}),
		client: rpc.NewConn(newTransport(cc), nil),
	}
	p.svc = captp.GrpcService(p.client.Bootstrap(context.Background()))
	return p
}

// unaryCall makes one GrpcService.unary call carrying req and checks the echo.
func (p *capnpPair) unaryCall(ctx context.Context, req []byte) error {
	f, release := p.svc.Unary(ctx, func(params captp.GrpcService_unary_Params) error {
		head, err := params.NewCall()
		if err != nil {
			return err
		}
		if err := head.SetMethod(methodUnary); err != nil {
			return err
		}
		return params.SetRequest(req)
	})
	defer release()
	res, err := f.Struct()
	if err != nil {
		return err
	}
	reply, err := res.Reply()
	if err != nil {
		return err
	}
	msg, err := reply.Message_()
	if err != nil {
		return err
	}
	if len(msg) != len(req) {
		return fmt.Errorf("echo of %d bytes returned %d", len(req), len(msg))
	}
	return nil
}

func BenchmarkCapnpUnary(b *testing.B) {
	codecs := []struct {
		name string
		new  func(net.Conn) transport.Transport
	}{
		{"stream", func(c net.Conn) transport.Transport { return transport.NewStream(c) }},
		{"flush-per-message", func(c net.Conn) transport.Transport { return transport.New(newFlushCodec(c)) }},
		{"write-behind", func(c net.Conn) transport.Transport { return transport.New(newWriteBehindCodec(c)) }},
	}
	for _, codec := range codecs {
		for _, c := range []int{1, 16, 64} {
			b.Run(fmt.Sprintf("%s/c%d", codec.name, c), func(b *testing.B) {
				p := newCapnpPair(b, codec.new)
				defer p.Close()
				req := make([]byte, 100)
				ctx := context.Background()
				if err := p.unaryCall(ctx, req); err != nil {
					b.Fatal(err)
				}
				var left atomic.Int64
				left.Store(int64(b.N))
				var failed atomic.Value
				cpu := cputime.Start()
				b.ReportAllocs()
				b.ResetTimer()
				var wg sync.WaitGroup
				for range c {
					wg.Go(func() {
						for left.Add(-1) >= 0 {
							if err := p.unaryCall(ctx, req); err != nil {
								failed.Store(err)
								return
							}
						}
					})
				}
				wg.Wait()
				b.StopTimer()
				if err, _ := failed.Load().(error); err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(cpu.MicrosPer(float64(b.N)), "cpu-us/call")
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
			})
		}
	}
}
