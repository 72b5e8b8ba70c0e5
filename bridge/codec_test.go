package bridge

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
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

// byteCounts is an OnMessage hook's tally.
type byteCounts struct{ sent, received atomic.Int64 }

func (c *byteCounts) onMessage(sent bool, size int) {
	if sent {
		c.sent.Add(int64(size))
	} else {
		c.received.Add(int64(size))
	}
}

// TestOnMessageCountsBytes: the ingress's and the egress's OnMessage see
// every message's uncompressed size once, both ways, on the known-unary
// fast path and on the general path (a stream, with a gzip client and a
// message larger than a unary call carries).
func TestOnMessageCountsBytes(t *testing.T) {
	backend := serve(t, func(*grpc.Server) {}, grpc.ForceServerCodecV2(Codec()), grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
		for { // echo
			var m []byte
			if err := ss.RecvMsg(&m); err == io.EOF {
				return nil
			} else if err != nil {
				return err
			}
			if err := ss.SendMsg(m); err != nil {
				return err
			}
		}
	}))
	var in, eg byteCounts
	kinds := Kinds{"/t.T/Unary": KindUnary}
	h := newHop(t, backend, hopConfig{
		ingress: IngressConfig{Kinds: kinds, OnMessage: in.onMessage},
		egress:  EgressConfig{Kinds: kinds, OnMessage: eg.onMessage},
	})
	cc := dial(t, h.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	want := 0
	var got []byte
	if err := cc.Invoke(ctx, "/t.T/Unary", make([]byte, 5), &got, grpc.ForceCodecV2(Codec())); err != nil || len(got) != 5 {
		t.Fatalf("unary call: %d bytes back, %v; want 5", len(got), err)
	}
	want += 5
	s := rawStream(ctx, t, cc, "/t.T/Stream", grpc.UseCompressor("gzip"))
	for _, n := range []int{10, 3000, 2 << 20} {
		if err := s.SendMsg(make([]byte, n)); err != nil {
			t.Fatal(err)
		}
		want += n
	}
	s.CloseSend()
	back, err := recvAll(s)
	if err != nil || len(back) != 3 {
		t.Fatalf("stream: %d messages back, %v; want 3", len(back), err)
	}
	// Every response reached the client, so every count was made.
	for _, c := range []struct {
		name string
		got  int64
	}{
		{"ingress received", in.received.Load()},
		{"ingress sent", in.sent.Load()},
		{"egress sent", eg.sent.Load()},
		{"egress received", eg.received.Load()},
	} {
		if c.got != int64(want) {
			t.Errorf("%s %d bytes, want %d", c.name, c.got, want)
		}
	}
}
