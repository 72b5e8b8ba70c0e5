package vat_test

import (
	"context"
	"runtime"
	"sync"
	"syscall"
	"testing"

	"github.com/vatcar/vatcar/vat"
)

var benchEngines = []vat.Engine{vat.EngineGoCapnp, vat.EngineVatcar}

// BenchmarkEngineCall is one unary call at a time between two vats over
// loopback TLS, on each engine (both vats on it); allocs/op counts both
// sides.
func BenchmarkEngineCall(b *testing.B) {
	for _, eng := range benchEngines {
		b.Run(eng.String(), func(b *testing.B) {
			ctx := context.Background()
			_, _, uri := hostEcho(b, "b", vat.WithEngine(vat.Config{}, eng))
			a := startVat(b, vat.WithEngine(vat.Config{}, eng))
			c, err := a.MustImport(uri).Connect(ctx)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Release()
			b.ReportAllocs()
			cpu0 := cpuTime()
			n := 0
			for b.Loop() {
				if _, err := call(ctx, c, "x"); err != nil {
					b.Fatal(err)
				}
				n++
			}
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(n), "cpu-ns/op")
		})
	}
}

// BenchmarkEngineCallsInFlight holds 256 unary calls in flight (their
// handler blocks) and reports the goroutines each costs on both vats
// together, beyond the caller's own goroutine; callers' contexts are
// cancellable, as a bridged gRPC call's is. The handler's goroutine
// (go-capnp's server.Call.Go) is one of them on either engine.
func BenchmarkEngineCallsInFlight(b *testing.B) {
	const n = 256
	for _, eng := range benchEngines {
		b.Run(eng.String(), func(b *testing.B) {
			ctx := context.Background()
			_, e, uri := hostEcho(b, "b", vat.WithEngine(vat.Config{MaxConcurrentCalls: 2 * n}, eng))
			a := startVat(b, vat.WithEngine(vat.Config{}, eng))
			c, err := a.MustImport(uri).Connect(ctx)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Release()
			var perCall float64
			for b.Loop() {
				// A cancellable context, as a bridged gRPC call's is.
				ctx, cancel := context.WithCancel(context.Background())
				e.block = make(chan struct{})
				before := e.calls.Load()
				base := runtime.NumGoroutine()
				var wg sync.WaitGroup
				for i := 0; i < n; i++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						if _, err := call(ctx, c, "x"); err != nil {
							b.Error(err)
						}
					}()
				}
				waitFor(b, "calls in flight", func() bool { return e.calls.Load()-before == n })
				perCall = float64(runtime.NumGoroutine()-base-n) / n
				close(e.block)
				wg.Wait()
				cancel()
			}
			b.ReportMetric(perCall, "goroutines/call")
		})
	}
}

// cpuTime is the process's user and system CPU time so far, in ns.
func cpuTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// BenchmarkEngineCallParallel is BenchmarkEngineCall with 32 callers (16
// per core) sharing the one connection.
func BenchmarkEngineCallParallel(b *testing.B) {
	for _, eng := range benchEngines {
		b.Run(eng.String(), func(b *testing.B) {
			ctx := context.Background()
			_, _, uri := hostEcho(b, "b", vat.WithEngine(vat.Config{}, eng))
			a := startVat(b, vat.WithEngine(vat.Config{}, eng))
			c, err := a.MustImport(uri).Connect(ctx)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Release()
			b.ReportAllocs()
			b.SetParallelism(16)
			cpu0 := cpuTime()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := call(ctx, c, "x"); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}
