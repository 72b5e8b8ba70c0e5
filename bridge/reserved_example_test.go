package bridge_test

import (
	"fmt"

	"google.golang.org/grpc/metadata"

	"github.com/vatcar/vatcar/bridge"
)

// ExampleReservedHeader keeps the keys of a call's metadata that a proxy
// forwards: the application's own, not those gRPC sets itself.
func ExampleReservedHeader() {
	md := metadata.Pairs(
		"content-type", "application/grpc",
		"grpc-timeout", "1S",
		"x-request-id", "42",
		"authorization", "Bearer t",
		":authority", "backend",
	)
	for _, k := range []string{":authority", "authorization", "content-type", "grpc-timeout", "x-request-id"} {
		if _, ok := md[k]; ok && !bridge.ReservedHeader(k) {
			fmt.Println("forward", k)
		}
	}
	// Output:
	// forward authorization
	// forward x-request-id
}
