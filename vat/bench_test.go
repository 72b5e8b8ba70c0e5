package vat_test

import (
	"context"
	"testing"

	"capnproto.org/go/capnp/v3"

	"github.com/vatcar/vatcar/vat"
)

// connectEcho restores a peer vat's echo service over loopback TLS; the
// caller releases the client.
func connectEcho(b *testing.B) capnp.Client {
	b.Helper()
	_, _, uri := hostEcho(b, "b", vat.Config{})
	a := startVat(b, vat.Config{})
	c, err := a.MustImport(uri).Connect(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// BenchmarkCall measures one call on a capability restored from a peer vat
// over loopback TLS, through the table's revocable proxy and the
// connection's call limiter.
func BenchmarkCall(b *testing.B) {
	ctx := context.Background()
	c := connectEcho(b)
	defer c.Release()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := call(ctx, c, "x"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCallParallel is BenchmarkCall with many calls in flight on the
// one connection.
func BenchmarkCallParallel(b *testing.B) {
	ctx := context.Background()
	c := connectEcho(b)
	defer c.Release()
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := call(ctx, c, "x"); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkConnectCached measures Connect on a ref whose peer is already
// connected: one restore round trip.
func BenchmarkConnectCached(b *testing.B) {
	ctx := context.Background()
	_, _, uri := hostEcho(b, "b", vat.Config{})
	a := startVat(b, vat.Config{})
	ref := a.MustImport(uri)
	for b.Loop() {
		c, err := ref.Connect(ctx)
		if err != nil {
			b.Fatal(err)
		}
		c.Release()
	}
}
