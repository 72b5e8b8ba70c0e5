// Package bridge translates gRPC calls to CapTP calls and back.
//
// Ingress is a gRPC server that accepts every method with a raw bytes codec
// and forwards each call to a GrpcService capability; Egress is a GrpcService
// capability that forwards to a gRPC client connection. Metadata, deadlines,
// cancellation, flow control, status and message sizes cross intact. The
// package knows nothing of keys, vats or config files.
package bridge
