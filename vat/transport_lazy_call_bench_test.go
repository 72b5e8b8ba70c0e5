package vat_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/vatcar/vatcar/internal/cputime"
)

// BenchmarkCallSerialCPU is BenchmarkCall (one call at a time on a
// capability restored from a peer vat over loopback TLS) with the CPU both
// vats spend per call. It first calls for longer than go-capnp holds a
// Finish back (250 ms), so that the Finishes of earlier calls leave while
// it measures, as they do in a long-running sidecar. With a gap, the caller
// sleeps that long after each call (the sleep may last longer), as the
// connection between two sidecars idles between calls with one in flight.
func BenchmarkCallSerialCPU(b *testing.B) {
	for _, gap := range []time.Duration{0, 300 * time.Microsecond} {
		b.Run(fmt.Sprintf("gap=%v", gap), func(b *testing.B) { benchCallSerial(b, gap) })
	}
}

// benchCallSerial runs BenchmarkCallSerialCPU for one gap.
func benchCallSerial(b *testing.B, gap time.Duration) {
	ctx := context.Background()
	c := connectEcho(b)
	defer c.Release()
	for warm := time.Now().Add(300 * time.Millisecond); time.Now().Before(warm); {
		if _, err := call(ctx, c, "x"); err != nil {
			b.Fatal(err)
		}
		if gap > 0 {
			time.Sleep(gap)
		}
	}
	cpu := cputime.Start()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := call(ctx, c, "x"); err != nil {
			b.Fatal(err)
		}
		if gap > 0 {
			time.Sleep(gap)
		}
	}
	b.StopTimer()
	b.ReportMetric(cpu.MicrosPer(float64(b.N)), "cpu-us/call")
}
