package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The backend's methods. Nothing in any path knows them: they travel as raw bytes.
const (
	methodUnary    = "/bench.Bench/Unary"    // echoes the request
	methodStream   = "/bench.Bench/Stream"   // server streaming, see streamRequest
	methodPingPong = "/bench.Bench/PingPong" // bidi, echoes each message
)

// maxMessage bounds one message on the harness's own clients and servers; the 4 MiB
// scenario needs more than gRPC's default 4 MiB receive limit.
const maxMessage = 64 << 20

// streamRequest is the Stream method's request: the size of each message and how many
// to send, as two big-endian uint32s.
func streamRequest(size, count int) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint32(b[0:4], uint32(size))
	binary.BigEndian.PutUint32(b[4:8], uint32(count))
	return b
}

// backend is the gRPC server at the end of every path.
type backend struct {
	srv *grpc.Server
	lis net.Listener
}

// startBackend serves the bench methods on a fresh 127.0.0.1 port.
func startBackend() (*backend, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("backend listen: %w", err)
	}
	srv := grpc.NewServer(
		grpc.ForceServerCodecV2(rawCodec{}),
		grpc.UnknownServiceHandler(serveBench),
		grpc.MaxRecvMsgSize(maxMessage),
		grpc.MaxSendMsgSize(maxMessage),
	)
	go func() { _ = srv.Serve(lis) }()
	return &backend{srv: srv, lis: lis}, nil
}

// Addr is the backend's host:port.
func (b *backend) Addr() string { return b.lis.Addr().String() }

// Close stops the server at once, ending open streams.
func (b *backend) Close() { b.srv.Stop() }

func serveBench(_ any, stream grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(stream)
	switch method {
	case methodUnary:
		var msg []byte
		if err := stream.RecvMsg(&msg); err != nil {
			return err
		}
		return stream.SendMsg(&msg)
	case methodStream:
		var req []byte
		if err := stream.RecvMsg(&req); err != nil {
			return err
		}
		if len(req) != 8 {
			return status.Errorf(codes.InvalidArgument, "stream request is %d bytes, want 8", len(req))
		}
		size := int(binary.BigEndian.Uint32(req[0:4]))
		count := int(binary.BigEndian.Uint32(req[4:8]))
		if size > maxMessage {
			return status.Errorf(codes.InvalidArgument, "message size %d over %d", size, maxMessage)
		}
		msg := make([]byte, size)
		for range count {
			if err := stream.SendMsg(&msg); err != nil {
				return err
			}
		}
		return nil
	case methodPingPong:
		for {
			// A fresh buffer per message: gRPC may still be writing the last one.
			var msg []byte
			err := stream.RecvMsg(&msg)
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			if err := stream.SendMsg(&msg); err != nil {
				return err
			}
		}
	default:
		return status.Errorf(codes.Unimplemented, "unknown method %s", method)
	}
}
