package bridge_test

import (
	"context"
	"log"
	"net"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vatcar/vatcar/bridge"
	"github.com/vatcar/vatcar/proto/captp"
)

// ExampleNewEgress serves the local app's gRPC server as the bootstrap
// capability of every capnp connection accepted on a listener.
func ExampleNewEgress() {
	app, err := grpc.NewClient("127.0.0.1:50051", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer app.Close()
	svc, err := bridge.NewEgress(bridge.EgressConfig{Conn: app, MaxConcurrentCalls: 256})
	if err != nil {
		log.Fatal(err)
	}
	defer svc.Release()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			// The connection takes over the reference it is given.
			rpc.NewConn(rpc.NewStreamTransport(c), &rpc.Options{BootstrapClient: capnp.Client(svc.AddRef())})
		}
	}()
	ln.Close()
}

// ExampleNewIngress serves gRPC on a local port and sends every call over a
// capnp connection to a remote GrpcService.
func ExampleNewIngress() {
	nc, err := net.Dial("tcp", "127.0.0.1:4000")
	if err != nil {
		log.Print(err)
		return
	}
	conn := rpc.NewConn(rpc.NewStreamTransport(nc), nil)
	defer conn.Close()
	remote := captp.GrpcService(conn.Bootstrap(context.Background()))
	defer remote.Release()

	in, err := bridge.NewIngress(bridge.IngressConfig{
		Director: func(ctx context.Context, fullMethod string) (captp.GrpcService, error) {
			return remote.AddRef(), nil // the ingress releases it when the call ends
		},
		MaxMessageSize: 64 << 20,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer in.Close()      // once the server has stopped
	srv := in.NewServer() // add interceptors or stats handlers here
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(ln)
	srv.Stop()
}
