package bridge

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// BenchmarkNewCall measures what the egress does for a call before its
// backend call starts (newCall): decode the call head, ask who calls, and
// make the call's context with its outgoing metadata, under a cancellable
// base context as the sidecar's. With metadata: four keys as traced,
// authenticated apps send them, one binary.
func BenchmarkNewCall(b *testing.B) {
	cc, err := grpc.NewClient("passthrough:///unused", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	base, cancel := context.WithCancel(context.Background())
	defer cancel()
	who := Caller{Peer: "sha-256:9Wn8mXrV2cQpL0aT4yE7uH1jK3dF6gS5zB8nM0qR2wY", Ref: "rev1:Qk3v8Zp1xW7yT2rN5mL0aB"}
	e, err := newEgress(EgressConfig{Conn: cc, Context: base, Caller: func(context.Context) (Caller, bool) { return who, true }})
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		md   metadata.MD
	}{
		{"metadata=0", metadata.Pairs("content-type", "application/grpc")},
		{"metadata=4", metadata.Pairs("content-type", "application/grpc",
			"authorization", "Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhcHAifQ.c2lnbmF0dXJl",
			"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
			"x-request-id", "7f1c2a9e-3b4d-4e5f-8a6b-9c0d1e2f3a4b",
			"x-tenant-bin", "\x01\x02\x03\x04")},
	} {
		h := emptyCallHead(b)
		if err := writeCallHead(h, context.Background(), "/p.S/M", tc.md); err != nil {
			b.Fatal(err)
		}
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			parent := context.Background()
			for b.Loop() {
				h.Message().ResetReadLimit(1 << 30) // read again and again
				c, err := e.newCall(parent, h, slot{})
				if err != nil {
					b.Fatal(err)
				}
				c.cancel()
			}
		})
	}
}
