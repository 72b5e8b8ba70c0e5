package main_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/types/descriptorpb"
)

// TestInteropThroughTwoSidecars runs the grpc-go interop suite against a
// backend reached through two vatcar processes: gRPC -> importer -> CapTP
// over TLS -> exporter -> gRPC. The Do* functions fail the process (via
// grpclog.Fatal) on any mismatch.
func TestInteropThroughTwoSidecars(t *testing.T) {
	p := startPair(t)
	ctx := ctxTimeout(t, 60*time.Second)
	runInterop(t, ctx, p)
	// The same with the service's descriptor set on both sidecars: the
	// unary methods take the bridge's fast path.
	protoset := writeTestProtoset(t)
	withKinds := startPairArgs(t, []string{"--proto-descriptors", protoset}, "--proto-descriptors", protoset)
	t.Run("proto_descriptors", func(t *testing.T) { runInterop(t, ctx, withKinds) })
	// The same through the shared --grpc-listen endpoint, routed by service
	// name.
	_, shared := startSidecar(t, "--import", "test=@"+p.capFile, "--grpc-listen", "127.0.0.1:0",
		"--route", "grpc.testing.TestService=test")
	routed := testgrpc.NewTestServiceClient(dial(t, shared.GRPC))
	t.Run("routed_large_unary", func(t *testing.T) { interop.DoLargeUnaryCall(ctx, routed) })
	t.Run("routed_ping_pong", func(t *testing.T) { interop.DoPingPong(ctx, routed) })
	if got := len(shared.Imports); got != 0 {
		t.Errorf("routed import has its own endpoint too: %v", shared.Imports)
	}
	_, err := testgrpc.NewUnimplementedServiceClient(dial(t, shared.GRPC)).UnimplementedCall(ctx, &testgrpc.Empty{})
	if err == nil {
		t.Error("a call to a service without a route succeeded")
	}
}

// runInterop runs the interop cases through p.
func runInterop(t *testing.T, ctx context.Context, p *pair) {
	cases := []struct {
		name string
		run  func(context.Context)
	}{
		{"empty_unary", func(ctx context.Context) { interop.DoEmptyUnaryCall(ctx, p.client) }},
		{"large_unary", func(ctx context.Context) { interop.DoLargeUnaryCall(ctx, p.client) }},
		{"client_streaming", func(ctx context.Context) { interop.DoClientStreaming(ctx, p.client) }},
		{"server_streaming", func(ctx context.Context) { interop.DoServerStreaming(ctx, p.client) }},
		{"ping_pong", func(ctx context.Context) { interop.DoPingPong(ctx, p.client) }},
		{"empty_stream", func(ctx context.Context) { interop.DoEmptyStream(ctx, p.client) }},
		{"timeout_on_sleeping_server", func(ctx context.Context) { interop.DoTimeoutOnSleepingServer(ctx, p.client) }},
		{"cancel_after_begin", func(ctx context.Context) { interop.DoCancelAfterBegin(ctx, p.client) }},
		{"cancel_after_first_response", func(ctx context.Context) { interop.DoCancelAfterFirstResponse(ctx, p.client) }},
		{"status_code_and_message", func(ctx context.Context) { interop.DoStatusCodeAndMessage(ctx, p.client) }},
		{"special_status_message", func(ctx context.Context) { interop.DoSpecialStatusMessage(ctx, p.client) }},
		{"custom_metadata", func(ctx context.Context) { interop.DoCustomMetadata(ctx, p.client) }},
		{"unimplemented_method", func(ctx context.Context) { interop.DoUnimplementedMethod(ctx, p.cc) }},
		{"unimplemented_service", func(ctx context.Context) {
			interop.DoUnimplementedService(ctx, testgrpc.NewUnimplementedServiceClient(p.cc))
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.run(ctx) })
	}
}

// writeTestProtoset writes the FileDescriptorSet of grpc.testing's services
// (TestService, UnimplementedService, ...) and returns its path.
func writeTestProtoset(t *testing.T) string {
	t.Helper()
	set := &descriptorpb.FileDescriptorSet{File: []*descriptorpb.FileDescriptorProto{
		protodesc.ToFileDescriptorProto(testgrpc.File_grpc_testing_test_proto),
	}}
	b, err := proto.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, t.TempDir(), "test.protoset", string(b))
}
