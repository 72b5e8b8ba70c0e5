package bridge

import (
	"bytes"
	"errors"
	"testing"

	"google.golang.org/grpc/mem"
)

func TestCodec(t *testing.T) {
	c := Codec()
	if c.Name() != "proto" {
		t.Errorf("Name() = %q, want proto", c.Name())
	}
	in := []byte("\x00not a proto\xff")
	for _, v := range []any{in, &in} {
		out, err := c.Marshal(v)
		if err != nil {
			t.Fatalf("Marshal(%T): %v", v, err)
		}
		if got := out.Materialize(); !bytes.Equal(got, in) {
			t.Errorf("Marshal(%T) = %q, want %q", v, got, in)
		}
	}
	var got []byte
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(in)}, &got); err != nil || !bytes.Equal(got, in) {
		t.Errorf("Unmarshal into *[]byte = %q, %v", got, err)
	}
	// A frame keeps gRPC's buffers (a reference, no copy) and hands them
	// back on Marshal.
	var f frame
	data := mem.BufferSlice{mem.SliceBuffer(in)}
	if err := c.Unmarshal(data, &f); err != nil || !bytes.Equal(f.data.Materialize(), in) {
		t.Errorf("Unmarshal into a frame: %v", err)
	}
	out, err := c.Marshal(&f)
	if err != nil || !bytes.Equal(out.Materialize(), in) || f.data != nil {
		t.Errorf("Marshal(frame) = %q, %v; the frame must give its buffers up", out.Materialize(), err)
	}
	if _, err := c.Marshal(42); !errors.Is(err, ErrMessageType) {
		t.Errorf("Marshal(int) error = %v, want ErrMessageType", err)
	}
	if err := c.Unmarshal(data, new(int)); !errors.Is(err, ErrMessageType) {
		t.Errorf("Unmarshal(*int) error = %v, want ErrMessageType", err)
	}
}
