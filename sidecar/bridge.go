package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/experimental"

	"github.com/vatcar/vatcar/bridge"
	"github.com/vatcar/vatcar/vat"
)

// The flow-control windows of the sidecar's own gRPC connections (the
// app's client connection to an ingress, an egress's connection to its
// backend). Fixed windows turn off grpc-go's bandwidth estimator, which
// otherwise answers every burst of data that finds no ping outstanding with
// a window update and a PING, and reads the peer's ack: with one call at a
// time that is a write, a read and a wake-up per call on each side, work
// nginx's gRPC proxy does not do. 1 MiB per stream is what the estimator
// reaches on a fast link anyway (its cap is 16 MiB), and bounds what a
// stream buffers before the bridge reads it; the connection window only
// caps the bytes in flight on the connection.
const (
	streamWindow = 1 << 20
	connWindow   = 16 << 20
)

// windowServerOptions and backendDialOptions set those windows.
func windowServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.StaticStreamWindowSize(streamWindow), grpc.StaticConnWindowSize(connWindow)}
}

// An egress's connection also reads into the bridge's buffer pool, which
// does not zero buffers (bridge.BufferPool).
func backendDialOptions() []grpc.DialOption {
	return []grpc.DialOption{grpc.WithStaticStreamWindowSize(streamWindow), grpc.WithStaticConnWindowSize(connWindow),
		experimental.WithBufferPool(bridge.BufferPool())}
}

// newIngressServer returns a gRPC server that bridges every call through d
// (counted in calls: serveIngressCall), with opts after the bridge's own
// options, and its bridge ingress, to close once the server has stopped.
func newIngressServer(d director, kinds bridge.Kinds, lim egressLimits, calls *sideMetrics, log *slog.Logger, opts ...grpc.ServerOption) (*grpc.Server, *bridge.Ingress, error) {
	in, err := bridge.NewIngress(bridge.IngressConfig{
		Director:          bridge.Director(d),
		BorrowedClients:   true, // the director's capabilities are lent (imported.director)
		Kinds:             kinds,
		MaxMessageSize:    lim.maxMessageSize,
		MaxMetadataSize:   lim.maxMetadataSize,
		StreamIdleTimeout: lim.streamIdleTimeout,
		OnCapTPFailure:    markCapTPFailure,
		OnMessage:         lim.onMessage,
		Logger:            log,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("ingress: %w", err)
	}
	opts = append(append(windowServerOptions(), opts...),
		grpc.InTapHandle(in.TapHandle(nil)),
		grpc.UnknownServiceHandler(serveIngressCall(calls, in.Handler()))) // in place of the bridge's own
	return in.NewServer(opts...), in, nil
}

// egressLimits are the bounds of an export's egress, and of an ingress's
// calls (the same flags bound both sides), from the Config.
type egressLimits struct {
	maxMessageSize, maxMetadataSize, maxConcurrentCalls int
	streamIdleTimeout                                   time.Duration
	onOverloaded                                        func(perCaller bool)      // counts refusals; nil: none
	onMessage                                           func(sent bool, size int) // counts message bytes; nil: none
}

// egressLimits returns the egress bounds of cfg (with defaults).
func (c Config) egressLimits() egressLimits {
	return egressLimits{
		maxMessageSize:     int(c.MaxMessageSize),
		maxMetadataSize:    int(c.MaxMetadataSize),
		maxConcurrentCalls: c.MaxConcurrentCalls,
		streamIdleTimeout:  time.Duration(c.StreamIdleTimeout),
	}
}

// caller tells the egress who makes a call: the grant of the restore the
// call came through (vat.GrantFromContext), with a narrowed ref's per-call
// caveats (method, expiry).
func (s *Sidecar) caller(ctx context.Context) (bridge.Caller, bool) {
	g, ok := vat.GrantFromContext(ctx)
	if !ok {
		return bridge.Caller{}, false
	}
	c := bridge.Caller{Ref: g.Ref.String()}
	if !g.Peer.IsZero() {
		c.Peer = g.PeerName()
	}
	if len(g.Caveats.Blocks) > 0 {
		cv := g.Caveats
		c.Check = func(method string) error {
			err := cv.CheckMethod(method)
			if err == nil {
				err = cv.CheckTime(time.Now())
			}
			var ce *vat.CaveatError
			if errors.As(err, &ce) {
				s.metrics.caveatRefusals.WithLabelValues(ce.Kind).Inc()
			}
			return err
		}
		c.Expires = cv.Expiry()
	}
	return c, true
}

// newEgress returns the capability that forwards calls to cc; the caller
// owns it (the restorer table takes it over). Its calls end when cut does
// (revocation).
func newEgress(cut context.Context, cc grpc.ClientConnInterface, kinds bridge.Kinds, lim egressLimits, caller func(context.Context) (bridge.Caller, bool), log *slog.Logger) (capnp.Client, error) {
	svc, err := bridge.NewEgress(bridge.EgressConfig{
		Conn:               cc,
		Context:            cut,
		Kinds:              kinds,
		MaxMessageSize:     lim.maxMessageSize,
		MaxMetadataSize:    lim.maxMetadataSize,
		MaxConcurrentCalls: lim.maxConcurrentCalls,
		StreamIdleTimeout:  lim.streamIdleTimeout,
		OnOverloaded:       lim.onOverloaded,
		OnMessage:          lim.onMessage,
		CallerKey:          vat.CallerOf, // the limit is per peer connection
		Logger:             log,
		Caller:             caller,
	})
	if err != nil {
		return capnp.Client{}, fmt.Errorf("egress: %w", err)
	}
	return capnp.Client(svc), nil
}
