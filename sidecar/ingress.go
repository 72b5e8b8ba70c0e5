package sidecar

import (
	"context"
	"errors"
	"net"
	"sync"

	"google.golang.org/grpc"

	"github.com/vatcar/vatcar/proto/captp"
)

// director picks the capability that serves a call, by full method name.
type director func(ctx context.Context, fullMethod string) (captp.GrpcService, error)

// ingress is one app-facing gRPC endpoint: a bridge ingress server on a
// loopback (by default) listener.
type ingress struct {
	srv      *grpc.Server
	addr     net.Addr
	done     chan struct{}
	stopOnce sync.Once
}

// startIngress listens on addr (an empty host means loopback) and serves
// calls through d.
func (s *Sidecar) startIngress(addr string, d director) (*ingress, error) {
	ln, err := net.Listen("tcp", loopbackIfNoHost(addr))
	if err != nil {
		return nil, err
	}
	srv, err := newIngressServer(d, s.cfg.MaxMessageSize, s.log,
		grpc.StatsHandler(s.metrics.statsHandler(SideIngress, nil)),
		grpc.ChainStreamInterceptor(forgetOnCapTPFailure))
	if err != nil {
		ln.Close()
		return nil, err
	}
	in := &ingress{srv: srv, addr: ln.Addr(), done: make(chan struct{})}
	go func() {
		defer close(in.done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			s.log.Error("gRPC endpoint failed", "listen", in.addr.String(), "err", err)
		}
	}()
	return in, nil
}

// drain stops accepting and waits for the calls in flight until ctx ends,
// then cuts off what still runs. It reports whether every call finished.
func (in *ingress) drain(ctx context.Context) bool {
	finished := make(chan struct{})
	go func() {
		in.srv.GracefulStop()
		close(finished)
	}()
	graceful := true
	select {
	case <-finished:
	case <-ctx.Done():
		graceful = false
		in.srv.Stop()
		<-finished
	}
	<-in.done
	return graceful
}

// stop closes the endpoint at once.
func (in *ingress) stop() {
	in.stopOnce.Do(in.srv.Stop)
	<-in.done
}

// forgetOnCapTPFailure makes the import that served a call drop its
// capability when the call failed because of CapTP (peer gone, ref revoked or
// unknown), before the status reaches the client: the client's next call
// connects again.
func forgetOnCapTPFailure(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	err := handler(srv, ss)
	if err != nil && capTPFailure(err) {
		if info, _ := ss.Context().Value(rpcKey{}).(*rpcInfo); info != nil {
			if im := info.imp.Load(); im != nil {
				im.forget()
			}
		}
	}
	return err
}

// loopbackIfNoHost turns ":PORT" into "127.0.0.1:PORT": app-facing and admin
// listeners face loopback unless a host is named (0.0.0.0 for all).
func loopbackIfNoHost(addr string) string {
	if host, port, err := net.SplitHostPort(addr); err == nil && host == "" {
		return net.JoinHostPort("127.0.0.1", port)
	}
	return addr
}
