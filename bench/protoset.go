package main

import (
	"fmt"
	"os"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"
)

// benchProtoset is the FileDescriptorSet of the backend's service, as
// `protoc --descriptor_set_out` would write it for
//
//	package bench;
//	message Bytes { bytes data = 1; }
//	service Bench {
//	  rpc Unary(Bytes) returns (Bytes);
//	  rpc Stream(Bytes) returns (stream Bytes);
//	  rpc PingPong(stream Bytes) returns (stream Bytes);
//	}
//
// The backend itself needs no protos (it echoes raw bytes); the sidecars read
// the method kinds from this file (--proto-descriptors), as a deployment
// would give them its services' descriptor sets.
func benchProtoset() *descriptorpb.FileDescriptorSet {
	msg := ".bench.Bytes"
	method := func(name string, clientStreams, serverStreams bool) *descriptorpb.MethodDescriptorProto {
		return &descriptorpb.MethodDescriptorProto{
			Name:            proto.String(name),
			InputType:       proto.String(msg),
			OutputType:      proto.String(msg),
			ClientStreaming: proto.Bool(clientStreams),
			ServerStreaming: proto.Bool(serverStreams),
		}
	}
	return &descriptorpb.FileDescriptorSet{File: []*descriptorpb.FileDescriptorProto{{
		Name:    proto.String("bench/bench.proto"),
		Package: proto.String("bench"),
		Syntax:  proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{{
			Name: proto.String("Bytes"),
			Field: []*descriptorpb.FieldDescriptorProto{{
				Name:   proto.String("data"),
				Number: proto.Int32(1),
				Label:  descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(),
				Type:   descriptorpb.FieldDescriptorProto_TYPE_BYTES.Enum(),
			}},
		}},
		Service: []*descriptorpb.ServiceDescriptorProto{{
			Name: proto.String("Bench"),
			Method: []*descriptorpb.MethodDescriptorProto{
				method("Unary", false, false),
				method("Stream", false, true),
				method("PingPong", true, true),
			},
		}},
	}}}
}

// writeProtoset writes benchProtoset to path.
func writeProtoset(path string) error {
	b, err := proto.Marshal(benchProtoset())
	if err != nil {
		return fmt.Errorf("protoset: %w", err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("protoset: %w", err)
	}
	return nil
}
