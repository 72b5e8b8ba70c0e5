package sidecar

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vatcar/vatcar/internal/rawconn"
	"github.com/vatcar/vatcar/proto/captp"
	"github.com/vatcar/vatcar/vat"
)

// appHandshakeTimeout bounds the HTTP/2 handshake of a connection to an
// app-facing endpoint (grpc-go's default is 120s): a client that connects
// and sends nothing, or junk short of the HTTP/2 preface, is dropped then,
// like a peer vat that does not finish its TLS handshake.
const appHandshakeTimeout = vat.DefaultHandshakeTimeout

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

// appListener hands the ingress's gRPC server app connections with raw
// reads and writes (internal/rawconn). grpc-go sets TCP_USER_TIMEOUT (its
// keepalive timeout) only on a *net.TCPConn, so it is set here first.
type appListener struct{ net.Listener }

// appUserTimeout is grpc-go's default keepalive timeout, which it makes a
// server connection's TCP_USER_TIMEOUT.
const appUserTimeout = 20 * time.Second

func (l appListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	_ = rawconn.SetUserTimeout(c, int(appUserTimeout/time.Millisecond))
	return newPingAckConn(rawconn.Wrap(c), pingAckDelay), nil
}

// startIngress listens on addr (an empty host means loopback) and serves
// calls through d.
func (s *Sidecar) startIngress(addr string, d director) (*ingress, error) {
	ln, err := net.Listen("tcp", loopbackIfNoHost(addr))
	if err != nil {
		return nil, err
	}
	srv, err := newIngressServer(d, s.kinds, s.cfg.egressLimits(), s.log,
		grpc.ConnectionTimeout(appHandshakeTimeout),
		grpc.StatsHandler(s.metrics.statsHandler(SideIngress, nil)),
		grpc.ChainStreamInterceptor(forgetOnCapTPFailure))
	if err != nil {
		ln.Close()
		return nil, err
	}
	in := &ingress{srv: srv, addr: ln.Addr(), done: make(chan struct{})}
	go func() {
		defer close(in.done)
		if err := srv.Serve(appListener{ln}); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
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

// forgetOnCapTPFailure ends a call on the import address (backend) that
// served it, and makes that address restore its capability again when the
// call failed because of CapTP (peer gone, ref revoked or unknown), before
// the status reaches the client. The origin is the ingress's typed signal
// (bridge.IngressConfig.OnCapTPFailure, recorded by markCapTPFailure), never
// the status text: an app's own UNAVAILABLE "db disconnected" keeps the
// capability. A call the exporter cut off because it revoked the export
// carries a typed ErrorInfo (errRevokedCall).
//
// A call on a capability revoked by its exporter fails with NOT_FOUND, as
// every later call on that import does (the exporter no longer knows the
// id), rather than with the UNKNOWN of a plain capnp exception.
func forgetOnCapTPFailure(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	err := handler(srv, ss)
	info, _ := ss.Context().Value(rpcKey{}).(*rpcInfo)
	if info == nil {
		return err
	}
	failed := err != nil && (info.capTP.Load() || revokedByExporter(err))
	if b := info.backend.Load(); b != nil {
		b.done(failed)
	}
	if im := info.imp.Load(); im != nil {
		im.slots.Give(appConnOf(ss.Context())) // taken by the director
	}
	if !failed {
		return err
	}
	return revokedNotFound(err, info.imp.Load())
}

// revokedNotFound turns the error of a call on a revoked capability into
// NOT_FOUND naming the import (im may be nil); other errors pass unchanged.
func revokedNotFound(err error, im *imported) error {
	st := status.Convert(err)
	if st.Code() == codes.NotFound || !strings.Contains(st.Message(), vat.ErrRevoked.Error()) {
		return err
	}
	name := ""
	if im != nil {
		name = fmt.Sprintf(" import %q:", im.Name)
	}
	return status.Errorf(codes.NotFound, "vatcar:%s service revoked by its exporter: %s", name, st.Message())
}

// loopbackIfNoHost turns ":PORT" into "127.0.0.1:PORT": app-facing and admin
// listeners face loopback unless a host is named (0.0.0.0 for all).
func loopbackIfNoHost(addr string) string {
	if host, port, err := net.SplitHostPort(addr); err == nil && host == "" {
		return net.JoinHostPort("127.0.0.1", port)
	}
	return addr
}
