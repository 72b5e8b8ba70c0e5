package bridge

import (
	"context"
	"errors"
	"testing"

	"google.golang.org/grpc"

	"github.com/vatcar/vatcar/proto/captp"
)

func TestIngressConfigValidate(t *testing.T) {
	dir := func(context.Context, string) (captp.GrpcService, error) { return captp.GrpcService{}, nil }
	cases := []struct {
		name string
		cfg  IngressConfig
		want error
	}{
		{"zero", IngressConfig{}, ErrNoDirector},
		{"director", IngressConfig{Director: dir}, nil},
		{"256 MiB", IngressConfig{Director: dir, MaxMessageSize: 256 << 20}, nil},
		{"negative size", IngressConfig{Director: dir, MaxMessageSize: -1}, ErrMessageSize},
		{"huge size", IngressConfig{Director: dir, MaxMessageSize: MaxMessageSizeLimit + 1}, ErrMessageSize},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := c.cfg.Validate(); !errors.Is(err, c.want) {
				t.Errorf("Validate() = %v, want %v", err, c.want)
			}
		})
	}
}

func TestEgressConfigValidate(t *testing.T) {
	var conn grpc.ClientConnInterface = &grpc.ClientConn{}
	cases := []struct {
		name string
		cfg  EgressConfig
		want error
	}{
		{"zero", EgressConfig{}, ErrNoConn},
		{"conn", EgressConfig{Conn: conn}, nil},
		{"negative calls", EgressConfig{Conn: conn, MaxConcurrentCalls: -1}, ErrConcurrency},
		{"negative size", EgressConfig{Conn: conn, MaxMessageSize: -5}, ErrMessageSize},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := c.cfg.Validate(); !errors.Is(err, c.want) {
				t.Errorf("Validate() = %v, want %v", err, c.want)
			}
		})
	}
}
