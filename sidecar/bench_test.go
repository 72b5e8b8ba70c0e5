package sidecar

import (
	"context"
	"testing"

	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"github.com/vatcar/vatcar/internal/cputime"
)

// BenchmarkPairUnary measures 1 KiB unary calls through an in-process pair
// (gRPC -> importer -> CapTP over TLS -> exporter -> gRPC), one at a time
// and in parallel.
func BenchmarkPairUnary(b *testing.B) {
	p := startBenchPair(b)
	req := &testgrpc.SimpleRequest{ResponseSize: 1024, Payload: &testgrpc.Payload{Body: make([]byte, 1024)}}
	ctx := context.Background()
	b.Run("serial", func(b *testing.B) {
		cpu := cputime.Start()
		for b.Loop() {
			if _, err := p.client.UnaryCall(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(cpu.MicrosPer(float64(b.N)), "cpu-us/op")
	})
	b.Run("parallel", func(b *testing.B) {
		b.SetParallelism(benchParallelism)
		cpu := cputime.Start()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := p.client.UnaryCall(ctx, req); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(cpu.MicrosPer(float64(b.N)), "cpu-us/op")
	})
}

// BenchmarkPairServerStream measures 1 KiB messages of one server stream
// through the pair.
func BenchmarkPairServerStream(b *testing.B) {
	p := startBenchPair(b)
	const perCall = 1000
	params := make([]*testgrpc.ResponseParameters, perCall)
	for i := range params {
		params[i] = &testgrpc.ResponseParameters{Size: 1024}
	}
	b.SetBytes(perCall * 1024)
	for b.Loop() {
		s, err := p.client.StreamingOutputCall(context.Background(), &testgrpc.StreamingOutputCallRequest{ResponseParameters: params})
		if err != nil {
			b.Fatal(err)
		}
		for range perCall {
			if _, err := s.Recv(); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// benchParallelism is the goroutines per CPU of the parallel benchmarks.
var benchParallelism = 16
