package bridge

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/gzip" // clients may compress with gzip
	"google.golang.org/grpc/mem"
)

// frame is one gRPC message as the bytes gRPC read or will write. Whoever
// holds a frame owns one reference on data and frees it exactly once: the raw
// codec hands it to gRPC on Marshal and takes a reference on Unmarshal.
type frame struct {
	data mem.BufferSlice
	// one backs data for a message in one buffer (single): the frame is
	// allocated anyway (it goes to gRPC as an interface), the slice need
	// not be. gRPC may keep data after Marshal; the frame stays reachable
	// through it.
	one [1]mem.Buffer
}

// single makes f hold b alone.
func (f *frame) single(b mem.Buffer) {
	f.one[0] = b
	f.data = f.one[:]
}

// free drops the frame's reference on its buffers. It leaves one alone:
// after Marshal, gRPC's slice may still be backed by it.
func (f *frame) free() {
	f.data.Free()
	f.data = nil
}

// rawCodec is an encoding.CodecV2 that moves message bytes without parsing
// them. Its name becomes the content-subtype of outgoing calls.
type rawCodec struct {
	name string
	// onMessage, if not nil, is told each message's size: sent on
	// Marshal, received on Unmarshal (IngressConfig.OnMessage,
	// EgressConfig.OnMessage).
	onMessage func(sent bool, size int)
}

var _ encoding.CodecV2 = rawCodec{}

// Codec returns the raw bytes codec the ingress and egress use: it accepts
// *[]byte and []byte (copied out and in) as well as the bridge's own frames
// (no copy), and never parses a payload. Its Name is "proto" so a client
// forced to use it sends the usual content-type; a server forced to use it
// (grpc.ForceServerCodecV2) answers whatever content-subtype it receives.
func Codec() encoding.CodecV2 { return rawCodec{name: "proto"} }

// Name returns the content-subtype this codec announces.
func (c rawCodec) Name() string { return c.name }

// Marshal returns v's bytes. A *frame's buffers move to gRPC (which frees
// them once written); a []byte is wrapped, not copied, so the caller must not
// change it until gRPC is done with it.
func (c rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	var data mem.BufferSlice
	switch m := v.(type) {
	case *frame:
		data = m.data
		m.data = nil
	case []byte:
		data = mem.BufferSlice{mem.SliceBuffer(m)}
	case *[]byte:
		data = mem.BufferSlice{mem.SliceBuffer(*m)}
	default:
		return nil, fmt.Errorf("bridge codec: marshal %T: %w", v, ErrMessageType)
	}
	if c.onMessage != nil {
		c.onMessage(true, data.Len())
	}
	return data, nil
}

// Unmarshal stores data in v: a *frame keeps a reference on gRPC's buffers
// (no copy), a *[]byte gets a copy.
func (c rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if c.onMessage != nil {
		c.onMessage(false, data.Len())
	}
	switch m := v.(type) {
	case *frame:
		data.Ref()
		m.data = data
		return nil
	case *[]byte:
		*m = data.Materialize()
		return nil
	default:
		return fmt.Errorf("bridge codec: unmarshal into %T: %w", v, ErrMessageType)
	}
}
