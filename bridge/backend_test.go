package bridge

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// backend is a gRPC server for the bridge tests that needs no protos: it
// takes every method with the raw codec and behaves by method name.
//
//	/t.T/Echo     echoes every message; at the client's half-close ends OK
//	              with trailer "x-echo-count".
//	/t.T/Hash     reads every message, then answers one: the SHA-256 of
//	              their concatenation followed by the byte count (8 bytes).
//	/t.T/Produce  answers messages of sizes read from the request (uint64s).
//	/t.T/Flood    answers req[0:8] messages of req[8:16] bytes.
//	/t.T/First    answers the first message and ends, reading no more.
//	/t.T/Hang     reports its context on started, waits for it to end, and
//	              reports ctx.Err() on ended.
//	/t.T/Headers  sends headers ("x-early": "1"), then waits for release
//	              before sending one message.
//	/t.T/Slow     reads a message every slowEvery, counting consumed bytes.
//	/t.T/Fail     fails with the status in the request's metadata, with
//	              headers when "x-send-headers" is set.
type backend struct {
	addr     string
	started  chan context.Context
	ended    chan error
	release  chan struct{}
	consumed atomic.Int64 // bytes /t.T/Slow read
	produced atomic.Int64 // bytes /t.T/Flood sent
	slow     time.Duration
}

func newBackend(t testing.TB, opts ...grpc.ServerOption) *backend {
	b := &backend{started: make(chan context.Context, 100), ended: make(chan error, 100), release: make(chan struct{}), slow: time.Millisecond}
	opts = append([]grpc.ServerOption{grpc.UnknownServiceHandler(b.handle), grpc.ForceServerCodecV2(Codec()),
		grpc.MaxRecvMsgSize(MaxMessageSizeLimit), grpc.MaxSendMsgSize(MaxMessageSizeLimit)}, opts...)
	b.addr = serve(t, func(*grpc.Server) {}, opts...)
	return b
}

func (b *backend) handle(_ any, ss grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(ss)
	ctx := ss.Context()
	switch method {
	case "/t.T/Echo":
		n := 0
		for {
			var m []byte
			if err := ss.RecvMsg(&m); err == io.EOF {
				ss.SetTrailer(metadata.Pairs("x-echo-count", itoa(n)))
				return nil
			} else if err != nil {
				return err
			}
			n++
			if err := ss.SendMsg(m); err != nil {
				return err
			}
		}
	case "/t.T/Hash":
		h := sha256.New()
		var n uint64
		for {
			var f frame // gRPC's buffers, not a copy: large messages pass here
			if err := ss.RecvMsg(&f); err == io.EOF {
				return ss.SendMsg(binary.BigEndian.AppendUint64(h.Sum(nil), n))
			} else if err != nil {
				return err
			}
			for _, b := range f.data {
				h.Write(b.ReadOnlyData())
			}
			n += uint64(f.data.Len())
			f.free()
		}
	case "/t.T/Produce":
		var req []byte
		if err := ss.RecvMsg(&req); err != nil {
			return err
		}
		for ; len(req) >= 8; req = req[8:] {
			if err := ss.SendMsg(pattern(int(binary.BigEndian.Uint64(req)))); err != nil {
				return err
			}
		}
		return nil
	case "/t.T/Flood":
		var req []byte
		if err := ss.RecvMsg(&req); err != nil {
			return err
		}
		msg := pattern(int(binary.BigEndian.Uint64(req[8:])))
		for n := binary.BigEndian.Uint64(req); n > 0; n-- {
			if err := ss.SendMsg(msg); err != nil {
				return err
			}
			b.produced.Add(int64(len(msg)))
		}
		return nil
	case "/t.T/First":
		var m []byte
		if err := ss.RecvMsg(&m); err != nil {
			return err
		}
		return ss.SendMsg(m)
	case "/t.T/Hang":
		b.started <- ctx
		<-ctx.Done()
		b.ended <- ctx.Err()
		return ctx.Err()
	case "/t.T/Headers":
		if err := ss.SendHeader(metadata.Pairs("x-early", "1")); err != nil {
			return err
		}
		select {
		case <-b.release:
		case <-ctx.Done():
			b.ended <- ctx.Err()
			return ctx.Err()
		}
		return ss.SendMsg([]byte("late"))
	case "/t.T/Slow":
		for {
			var m []byte
			if err := ss.RecvMsg(&m); err == io.EOF {
				return ss.SendMsg([]byte("done"))
			} else if err != nil {
				return err
			}
			b.consumed.Add(int64(len(m)))
			time.Sleep(b.slow) // a slow consumer, not a wait
		}
	case "/t.T/BigMetadata":
		// Headers and trailers of the sizes the request asks for, then an
		// echo of the first message once the client half-closes.
		md, _ := metadata.FromIncomingContext(ctx)
		if n := atoi(first(md["x-header-bytes"])); n > 0 {
			if err := ss.SendHeader(metadata.Pairs("x-big", strings.Repeat("h", n))); err != nil {
				return err
			}
		}
		if n := atoi(first(md["x-trailer-bytes"])); n > 0 {
			ss.SetTrailer(metadata.Pairs("x-big", strings.Repeat("t", n)))
		}
		var m []byte
		if err := ss.RecvMsg(&m); err != nil {
			return err
		}
		return ss.SendMsg(m)
	case "/t.T/Fail":
		md, _ := metadata.FromIncomingContext(ctx)
		if len(md["x-send-headers"]) > 0 {
			if err := ss.SendHeader(metadata.Pairs("x-hdr", "h")); err != nil {
				return err
			}
		}
		ss.SetTrailer(metadata.Pairs("x-trl", "t"))
		code := codes.Code(atoi(first(md["x-code"])))
		st := status.New(code, first(md["x-message-bin"]))
		return st.Err()
	}
	return status.Errorf(codes.Unimplemented, "backend: no method %s", method)
}

// pattern returns n bytes that differ from one position to the next (a
// 64 KiB xorshift block, tiled with a shift so large messages do not repeat
// exactly).
func pattern(n int) []byte {
	b := make([]byte, n)
	x := uint32(n) | 1
	for i := range b[:min(n, 1<<16)] {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	for off := 1 << 16; off < n; off += 1<<16 - 1 {
		copy(b[off:], b[:1<<16])
	}
	return b
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

func atoi(s string) int {
	n := 0
	for _, c := range s {
		n = n*10 + int(c-'0')
	}
	return n
}

// rawStream opens a call of any kind on cc with the raw codec.
func rawStream(ctx context.Context, t testing.TB, cc *grpc.ClientConn, method string, opts ...grpc.CallOption) grpc.ClientStream {
	t.Helper()
	opts = append([]grpc.CallOption{grpc.ForceCodecV2(Codec()), grpc.MaxCallRecvMsgSize(MaxMessageSizeLimit), grpc.MaxCallSendMsgSize(MaxMessageSizeLimit)}, opts...)
	s, err := cc.NewStream(ctx, &streamDesc, method, opts...)
	if err != nil {
		t.Fatalf("NewStream %s: %v", method, err)
	}
	return s
}

// recvAll reads messages until the end of the stream and returns them with
// the final error (nil for OK).
func recvAll(s grpc.ClientStream) ([][]byte, error) {
	var out [][]byte
	for {
		var m []byte
		err := s.RecvMsg(&m)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, m)
	}
}
