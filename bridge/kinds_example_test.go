package bridge_test

import (
	"fmt"
	"log"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/vatcar/vatcar/bridge"
)

// ExampleParseKinds reads method kinds from a descriptor set, as protoc
// --descriptor_set_out writes it (built here in code).
func ExampleParseKinds() {
	set := &descriptorpb.FileDescriptorSet{File: []*descriptorpb.FileDescriptorProto{{
		Name:    proto.String("echo.proto"),
		Package: proto.String("echo.v1"),
		Service: []*descriptorpb.ServiceDescriptorProto{{
			Name: proto.String("Echo"),
			Method: []*descriptorpb.MethodDescriptorProto{
				{Name: proto.String("Say"), InputType: proto.String(".echo.v1.Msg"), OutputType: proto.String(".echo.v1.Msg")},
				{Name: proto.String("Chat"), InputType: proto.String(".echo.v1.Msg"), OutputType: proto.String(".echo.v1.Msg"),
					ClientStreaming: proto.Bool(true), ServerStreaming: proto.Bool(true)},
			},
		}},
	}}}
	b, err := proto.Marshal(set)
	if err != nil {
		log.Fatal(err)
	}
	kinds, err := bridge.ParseKinds(b)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(kinds.Kind("/echo.v1.Echo/Say"))
	fmt.Println(kinds.Kind("/echo.v1.Echo/Chat"))
	fmt.Println(kinds.Kind("/echo.v1.Echo/Other"))
	// Output:
	// unary
	// bidi-stream
	// unknown
}
