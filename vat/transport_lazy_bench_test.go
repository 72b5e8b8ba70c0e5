package vat

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/vatcar/vatcar/internal/cputime"
)

// BenchmarkLazySerialTLS makes unary calls one at a time over go-capnp
// connections on loopback TLS, with Finish and Release sent at once
// (mode=eager, the codec before lazy messages) or lazily (mode=lazy). Both
// ends run in this process, so cpu-us/call is the CPU of both per call;
// writes/call and reads/call count syscalls on both sockets (reads that
// returned bytes).
// Each run first calls for longer than go-capnp holds a Finish back (250
// ms), so that Finishes leave at the rate calls are made. With gap=0 calls
// follow each other at once, and go-capnp's timers fire the Finishes of
// neighbouring calls together (eager writes batch some of them); the gap
// (a sleep after each call, which may last longer, as a client through two
// sidecars leaves the connection idle a few hundred microseconds between
// calls) spreads them out as in a sidecar.
func BenchmarkLazySerialTLS(b *testing.B) {
	for _, gap := range []time.Duration{0, 300 * time.Microsecond} {
		for _, mode := range []struct {
			name  string
			delay time.Duration
		}{{"mode=eager", 0}, {"mode=lazy", lazyDelay}} {
			b.Run(fmt.Sprintf("gap=%v/%s", gap, mode.name), func(b *testing.B) {
				benchSerial(b, mode.delay, gap)
			})
		}
	}
}

// benchSerial runs BenchmarkLazySerialTLS for one lazy delay and gap.
func benchSerial(b *testing.B, delay, gap time.Duration) {
	ctx := context.Background()
	p := newRPCPair(b, delay)
	call := func() {
		if err := p.unary(ctx); err != nil {
			b.Fatal(err)
		}
		if gap > 0 {
			time.Sleep(gap)
		}
	}
	for warm := time.Now().Add(300 * time.Millisecond); time.Now().Before(warm); {
		call()
	}
	writes0 := p.clientRaw.writes.Load() + p.serverRaw.writes.Load()
	reads0 := p.clientRaw.reads.Load() + p.serverRaw.reads.Load()
	cpu := cputime.Start()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		call()
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(cpu.MicrosPer(n), "cpu-us/call")
	b.ReportMetric(float64(p.clientRaw.writes.Load()+p.serverRaw.writes.Load()-writes0)/n, "writes/call")
	b.ReportMetric(float64(p.clientRaw.reads.Load()+p.serverRaw.reads.Load()-reads0)/n, "reads/call")
}
