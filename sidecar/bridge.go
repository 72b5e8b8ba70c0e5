package sidecar

import (
	"fmt"
	"log/slog"

	capnp "capnproto.org/go/capnp/v3"
	"google.golang.org/grpc"

	"github.com/vatcar/vatcar/bridge"
)

// newIngressServer returns a gRPC server that bridges every call through d,
// with opts (stats handlers) after the bridge's own options.
func newIngressServer(d director, maxMessageSize int, log *slog.Logger, opts ...grpc.ServerOption) (*grpc.Server, error) {
	in, err := bridge.NewIngress(bridge.IngressConfig{
		Director:       bridge.Director(d),
		MaxMessageSize: maxMessageSize,
		Logger:         log,
	})
	if err != nil {
		return nil, fmt.Errorf("ingress: %w", err)
	}
	return in.NewServer(opts...), nil
}

// newEgress returns the capability that forwards calls to cc; the caller
// owns it (the restorer table takes it over).
func newEgress(cc grpc.ClientConnInterface, maxMessageSize, maxConcurrentCalls int, log *slog.Logger) (capnp.Client, error) {
	svc, err := bridge.NewEgress(bridge.EgressConfig{
		Conn:               cc,
		MaxMessageSize:     maxMessageSize,
		MaxConcurrentCalls: maxConcurrentCalls,
		Logger:             log,
	})
	if err != nil {
		return capnp.Client{}, fmt.Errorf("egress: %w", err)
	}
	return capnp.Client(svc), nil
}
