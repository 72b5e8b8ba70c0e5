package main

import (
	"fmt"

	"google.golang.org/grpc/mem"
)

// rawCodec moves messages as raw bytes, so neither the load generator nor the backend
// needs protos. Messages are *[]byte. It names itself "proto" so the content type on
// the wire is the one every gRPC app sends (application/grpc+proto).
type rawCodec struct{}

// Marshal returns the bytes without copying; callers never modify a sent message.
func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	p, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("raw codec: marshal %T, want *[]byte", v)
	}
	return mem.BufferSlice{mem.SliceBuffer(*p)}, nil
}

// Unmarshal copies data into *v, reusing its capacity.
func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	p, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("raw codec: unmarshal into %T, want *[]byte", v)
	}
	b := (*p)[:0]
	for _, buf := range data {
		b = append(b, buf.ReadOnlyData()...)
	}
	*p = b
	return nil
}

func (rawCodec) Name() string { return "proto" }
