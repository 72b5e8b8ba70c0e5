package sidecar

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/types/descriptorpb"

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

// BenchmarkPairUnaryKnown is BenchmarkPairUnary's serial case with
// TestService's descriptors given to both sidecars (--proto-descriptors):
// every call takes the known-unary path, where BenchmarkPairUnary's calls
// take the stream path when the request was not read in time, so its
// allocations per call are the same from run to run.
func BenchmarkPairUnaryKnown(b *testing.B) {
	p := startBenchPairKinds(b, []string{writeTestProtoset(b)})
	req := &testgrpc.SimpleRequest{ResponseSize: 1024, Payload: &testgrpc.Payload{Body: make([]byte, 1024)}}
	ctx := context.Background()
	cpu := cputime.Start()
	for b.Loop() {
		if _, err := p.client.UnaryCall(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(cpu.MicrosPer(float64(b.N)), "cpu-us/op")
}

// writeTestProtoset writes the FileDescriptorSet of grpc.testing's
// services and returns its path.
func writeTestProtoset(t testing.TB) string {
	t.Helper()
	b, err := proto.Marshal(&descriptorpb.FileDescriptorSet{File: []*descriptorpb.FileDescriptorProto{
		protodesc.ToFileDescriptorProto(testgrpc.File_grpc_testing_test_proto),
	}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "test.protoset")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// BenchmarkPairUnaryMetadata is BenchmarkPairUnary's parallel case with
// request metadata as traced, authenticated apps send it: four keys, one
// of them binary.
func BenchmarkPairUnaryMetadata(b *testing.B) {
	p := startBenchPair(b)
	req := &testgrpc.SimpleRequest{ResponseSize: 1024, Payload: &testgrpc.Payload{Body: make([]byte, 1024)}}
	ctx := metadata.AppendToOutgoingContext(context.Background(),
		"authorization", "Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhcHAifQ.c2lnbmF0dXJl",
		"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"x-request-id", "7f1c2a9e-3b4d-4e5f-8a6b-9c0d1e2f3a4b",
		"x-tenant-bin", "\x01\x02\x03\x04")
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

// BenchmarkPairPingPong measures round trips of one bidi stream through the
// pair, one 1 KiB message each way at a time (FullDuplexCall): an op is a
// request and its response.
func BenchmarkPairPingPong(b *testing.B) {
	p := startBenchPair(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := p.client.FullDuplexCall(ctx)
	if err != nil {
		b.Fatal(err)
	}
	req := &testgrpc.StreamingOutputCallRequest{
		ResponseParameters: []*testgrpc.ResponseParameters{{Size: 1024}},
		Payload:            &testgrpc.Payload{Body: make([]byte, 1024)},
	}
	cpu := cputime.Start()
	for b.Loop() {
		if err := s.Send(req); err != nil {
			b.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(cpu.MicrosPer(float64(b.N)), "cpu-us/op")
	if err := s.CloseSend(); err != nil {
		b.Fatal(err)
	}
	if _, err := s.Recv(); err == nil {
		b.Fatal("a response after half-close")
	}
}

// BenchmarkPairClientStream measures client-streaming calls through the
// pair: three 1 KiB messages, the half-close, the response. The half-close
// is a Sink.close that must not wait for the sends' lazy Returns (5 ms).
func BenchmarkPairClientStream(b *testing.B) {
	p := startBenchPair(b)
	req := &testgrpc.StreamingInputCallRequest{Payload: &testgrpc.Payload{Body: make([]byte, 1024)}}
	cpu := cputime.Start()
	for b.Loop() {
		s, err := p.client.StreamingInputCall(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		for range 3 {
			if err := s.Send(req); err != nil {
				b.Fatal(err)
			}
		}
		res, err := s.CloseAndRecv()
		if err != nil {
			b.Fatal(err)
		}
		if res.GetAggregatedPayloadSize() != 3*1024 {
			b.Fatalf("aggregated %d bytes, want %d", res.GetAggregatedPayloadSize(), 3*1024)
		}
	}
	b.ReportMetric(cpu.MicrosPer(float64(b.N)), "cpu-us/op")
}
