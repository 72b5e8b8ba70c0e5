package sidecar

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/vatcar/vatcar/bridge"
	"github.com/vatcar/vatcar/internal/pingack"
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
	bridge   *bridge.Ingress // closed once srv has stopped
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
	return &appConn{Conn: pingack.New(rawconn.Wrap(c), pingack.Delay), addr: &appAddr{remote: c.RemoteAddr()}}, nil
}

// appConn is an app's connection to an ingress. Its RemoteAddr, which
// grpc-go gives every call of the connection as its peer's address
// (peer.FromContext), is a pointer of its own: the connection's identity
// for appConnOf.
type appConn struct {
	*pingack.Conn
	addr *appAddr
}

func (c *appConn) RemoteAddr() net.Addr { return c.addr }

// appAddr names one app connection (one HTTP/2 transport) to an ingress:
// the address the app connected from, in a pointer of the connection's
// own. It is never empty, so that every new appAddr is a distinct pointer
// (also for Unix sockets, whose clients have no address).
type appAddr struct{ remote net.Addr }

func (a *appAddr) Network() string {
	if a.remote == nil {
		return "unknown"
	}
	return a.remote.Network()
}

func (a *appAddr) String() string {
	if a.remote == nil {
		return ""
	}
	return a.remote.String()
}

// appConnOf returns the app connection a call of ctx came on (a comparable
// value, equal exactly for the calls of one connection); nil for a call
// that did not come through an appListener. Unlike the client's address
// it cannot be reused while calls of an old connection run: each call's
// context holds the pointer.
func appConnOf(ctx context.Context) any {
	if p, ok := peer.FromContext(ctx); ok {
		if a, ok := p.Addr.(*appAddr); ok {
			return a
		}
	}
	return nil
}

// startIngress listens on addr (an empty host means loopback) and serves
// calls through d.
func (s *Sidecar) startIngress(addr string, d director) (*ingress, error) {
	ln, err := net.Listen("tcp", loopbackIfNoHost(addr))
	if err != nil {
		return nil, err
	}
	lim := s.cfg.egressLimits()
	lim.onMessage = s.metrics.ingress.onMessage
	srv, br, err := newIngressServer(d, s.kinds, lim, s.metrics.ingress, s.log,
		grpc.ConnectionTimeout(appHandshakeTimeout))
	if err != nil {
		ln.Close()
		return nil, err
	}
	in := &ingress{srv: srv, bridge: br, addr: ln.Addr(), done: make(chan struct{})}
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
	in.bridge.Close()
	return graceful
}

// stop closes the endpoint at once.
func (in *ingress) stop() {
	in.stopOnce.Do(in.srv.Stop)
	<-in.done
	in.bridge.Close()
}

// serveIngressCall returns the stream handler of an ingress's server,
// which takes every call (grpc.UnknownServiceHandler) and bridges it with
// bridged: it counts the call in calls, gives the call's context an
// rpcInfo (markImport, markCapTPFailure), and ends the call on its import
// (forgetOnCapTPFailure). One allocation per call holds all of that; as a
// handler rather than an interceptor it costs grpc-go none (an interceptor
// gets a StreamServerInfo made for each call).
func serveIngressCall(calls *sideMetrics, bridged grpc.StreamHandler) grpc.StreamHandler {
	return func(srv any, ss grpc.ServerStream) error {
		method, _ := grpc.MethodFromServerStream(ss)
		ms := calls.series(method)
		start := ms.begin()
		c := &ingressStream{ServerStream: ss}
		c.ctx.Context = ss.Context()
		err := forgetOnCapTPFailure(&c.ctx, bridged(srv, c))
		ms.end(start, err) // the error as the client gets it
		return err
	}
}

// ingressStream is an app's call as the bridge sees it: the call's
// stream with a context that carries its rpcInfo.
type ingressStream struct {
	grpc.ServerStream
	ctx callContext
}

func (s *ingressStream) Context() context.Context { return &s.ctx }

// callContext is a call's context with its rpcInfo as the value of
// rpcKey{}: context.WithValue without an allocation of its own. Cancellation
// propagates from it as from its parent (Done and the parent's cancelCtx are
// the parent's), so contexts derived from it need no goroutine.
type callContext struct {
	context.Context
	info rpcInfo
}

func (c *callContext) Value(key any) any {
	if _, ok := key.(rpcKey); ok {
		return &c.info
	}
	return c.Context.Value(key)
}

type rpcKey struct{}

// rpcInfo is what the ingress keeps per call. The director records the
// import serving the call in imp, so that forgetOnCapTPFailure can make it
// drop its capability when the call fails because of CapTP, and give back
// the call's slot.
type rpcInfo struct {
	imp     atomic.Pointer[imported] // set: the call holds a slot of imp's (imported.slots)
	backend atomic.Pointer[backend]
	held    atomic.Pointer[heldClient] // the capability the director lent the call
	capTP   atomic.Bool                // the call failed because of CapTP (markCapTPFailure)
}

// markCapTPFailure is the ingress's OnCapTPFailure: it records that the
// call of ctx failed because of CapTP, not because of the far app.
func markCapTPFailure(ctx context.Context, _ error) {
	if info, _ := ctx.Value(rpcKey{}).(*rpcInfo); info != nil {
		info.capTP.Store(true)
	}
}

// markImport records that im serves the call of ctx at b, and reports
// whether it could (the call came through serveIngressCall).
func markImport(ctx context.Context, im *imported, b *backend, h *heldClient) bool {
	info, _ := ctx.Value(rpcKey{}).(*rpcInfo)
	if info == nil {
		return false
	}
	info.imp.Store(im)
	info.backend.Store(b)
	info.held.Store(h)
	return true
}

// forgetOnCapTPFailure ends a call that returned err on the import address
// (backend) that served it, and makes that address restore its capability
// again when the call failed because of CapTP (peer gone, ref revoked or
// unknown), before the status reaches the client. The origin is the
// ingress's typed signal (bridge.IngressConfig.OnCapTPFailure, recorded by
// markCapTPFailure), never the status text: an app's own UNAVAILABLE "db
// disconnected" keeps the capability. A call the exporter cut off because
// it revoked the export carries a typed ErrorInfo (errRevokedCall).
//
// A call on a capability revoked by its exporter fails with NOT_FOUND, as
// every later call on that import does (the exporter no longer knows the
// id), rather than with the UNKNOWN of a plain capnp exception.
func forgetOnCapTPFailure(ctx *callContext, err error) error {
	info := &ctx.info
	failed := err != nil && (info.capTP.Load() || revokedByExporter(err))
	if b := info.backend.Load(); b != nil {
		b.done(failed)
	}
	if h := info.held.Load(); h != nil {
		h.release() // lent by the director; the bridge is done with it
	}
	if im := info.imp.Load(); im != nil {
		im.slots.Give(appConnOf(ctx)) // taken by the director
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
