package bridge

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// echoBidi sends msgs on a bidi echo stream, half-closes, and checks that
// every message comes back in order, with the trailer.
func echoBidi(ctx context.Context, t testing.TB, cc *grpc.ClientConn, msgs [][]byte) {
	t.Helper()
	echoBidiOpts(ctx, t, cc, msgs)
}

// echoBidiOpts is echoBidi with call options.
func echoBidiOpts(ctx context.Context, t testing.TB, cc *grpc.ClientConn, msgs [][]byte, opts ...grpc.CallOption) {
	t.Helper()
	s := rawStream(ctx, t, cc, "/t.T/Echo", opts...)
	next := 0 // the first message whose echo has not been read
	for i, m := range msgs {
		if err := s.SendMsg(m); err != nil {
			t.Fatalf("SendMsg %d: %v", i, err)
		}
		if i%2 == 1 { // ping-pong half the time: read every echo so far
			for ; next <= i; next++ {
				var got []byte
				if err := s.RecvMsg(&got); err != nil {
					t.Fatalf("RecvMsg %d: %v", next, err)
				}
				if !bytes.Equal(got, msgs[next]) {
					t.Fatalf("message %d: got %d bytes, want %d", next, len(got), len(msgs[next]))
				}
			}
		}
	}
	if err := s.CloseSend(); err != nil {
		t.Fatalf("CloseSend: %v", err)
	}
	got, err := recvAll(s)
	if err != nil {
		t.Fatalf("stream ended with %v", err)
	}
	want := msgs[next:]
	if len(got) != len(want) {
		t.Fatalf("got %d messages after half-close, want %d", len(got), len(want))
	}
	for i := range got {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("message %d after half-close differs", next+i)
		}
	}
	if c := s.Trailer()["x-echo-count"]; len(c) != 1 || c[0] != fmt.Sprint(len(msgs)) {
		t.Errorf("trailer x-echo-count = %v, want %d", c, len(msgs))
	}
}

func testMessages(n int) [][]byte {
	msgs := make([][]byte, n)
	for i := range msgs {
		msgs[i] = pattern(1 + i*97%5000)
	}
	return msgs
}

// TestChainedBidiHalfClose runs bidi streams with half-close through two
// bridges: client -> ingress -> capnp -> egress -> ingress -> capnp ->
// egress -> server, the topology in which transparent proxies often hang.
func TestChainedBidiHalfClose(t *testing.T) {
	b := newBackend(t)
	inner := newHop(t, b.addr, hopConfig{})
	outer := newHop(t, inner.addr, hopConfig{})
	cc := dial(t, outer.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, n := range []int{0, 1, 2, 50} {
		t.Run(fmt.Sprint(n, "msgs"), func(t *testing.T) { echoBidi(ctx, t, cc, testMessages(n)) })
	}
	t.Run("multi-chunk msgs", func(t *testing.T) {
		echoBidi(ctx, t, cc, [][]byte{pattern(3 << 20), pattern(10), pattern(2<<20 + 1), {}, pattern(1 << 20)})
	})
}

func TestChainedBidiHalfClose_Stress(t *testing.T) {
	b := newBackend(t)
	inner := newHop(t, b.addr, hopConfig{})
	outer := newHop(t, inner.addr, hopConfig{})
	cc := dial(t, outer.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 8; i++ {
				echoBidi(ctx, t, cc, testMessages(1+(g*i)%40))
			}
		}()
	}
	wg.Wait()
}

// TestHeadersBeforeMessages checks that response headers reach the client
// as soon as the backend sends them, on both call paths.
func TestHeadersBeforeMessages(t *testing.T) {
	b := newBackend(t)
	h := newHop(t, b.addr, hopConfig{})
	cc := dial(t, h.addr)
	for _, halfClose := range []bool{true, false} {
		t.Run(fmt.Sprint("halfClose=", halfClose), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			s := rawStream(ctx, t, cc, "/t.T/Headers")
			if err := s.SendMsg([]byte("x")); err != nil {
				t.Fatal(err)
			}
			if halfClose {
				if err := s.CloseSend(); err != nil {
					t.Fatal(err)
				}
			}
			md, err := s.Header() // the backend waits for release before its message
			if err != nil {
				t.Fatalf("Header: %v", err)
			}
			if got := md["x-early"]; len(got) != 1 || got[0] != "1" {
				t.Fatalf("headers = %v, want x-early: 1", md)
			}
			b.release <- struct{}{}
			if !halfClose {
				s.CloseSend()
			}
			msgs, err := recvAll(s)
			if err != nil || len(msgs) != 1 || string(msgs[0]) != "late" {
				t.Fatalf("got %q, %v; want [late], nil", msgs, err)
			}
		})
	}
}

// TestServerStreaming checks that a unary-shaped request to a streaming
// method gets all its responses, of all sizes.
func TestServerStreaming(t *testing.T) {
	b := newBackend(t)
	h := newHop(t, b.addr, hopConfig{})
	cc := dial(t, h.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sizes := []int{0, 1, 100, 5 << 20 / 2, 0, 3 << 20, 7}
	var req []byte
	for _, n := range sizes {
		req = append(req, byte(n>>56), byte(n>>48), byte(n>>40), byte(n>>32), byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	for _, k := range []int{1, len(sizes)} {
		s := rawStream(ctx, t, cc, "/t.T/Produce")
		if err := s.SendMsg(req[:8*k]); err != nil {
			t.Fatal(err)
		}
		s.CloseSend()
		got, err := recvAll(s)
		if err != nil {
			t.Fatalf("Produce: %v", err)
		}
		if len(got) != k {
			t.Fatalf("got %d messages, want %d", len(got), k)
		}
		for i, m := range got {
			if !bytes.Equal(m, pattern(sizes[i])) {
				t.Fatalf("message %d: %d bytes, want %d (or content differs)", i, len(m), sizes[i])
			}
		}
	}
}

// TestStatusAndMetadata checks status codes, non-ASCII messages, details,
// headers and trailers of failed calls, and request metadata including -bin
// keys and trace headers.
func TestStatusAndMetadata(t *testing.T) {
	b := newBackend(t)
	h := newHop(t, b.addr, hopConfig{})
	cc := dial(t, h.addr)
	for _, sendHeaders := range []bool{false, true} {
		for _, halfClose := range []bool{true, false} {
			t.Run(fmt.Sprintf("headers=%v,halfClose=%v", sendHeaders, halfClose), func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				md := metadata.Pairs("x-code", fmt.Sprint(int(codes.FailedPrecondition)), "x-message-bin", "ünïcödé ☺ 😈 \t\r\n%")
				if sendHeaders {
					md.Set("x-send-headers", "1")
				}
				ctx = metadata.NewOutgoingContext(ctx, md)
				s := rawStream(ctx, t, cc, "/t.T/Fail")
				s.SendMsg([]byte{})
				if halfClose {
					s.CloseSend()
				}
				_, err := recvAll(s)
				st := status.Convert(err)
				if st.Code() != codes.FailedPrecondition || st.Message() != "ünïcödé ☺ 😈 \t\r\n%" {
					t.Errorf("status = %v %q, want FailedPrecondition with the message intact", st.Code(), st.Message())
				}
				if got := s.Trailer()["x-trl"]; len(got) != 1 || got[0] != "t" {
					t.Errorf("trailers = %v, want x-trl: t", s.Trailer())
				}
				hdr, _ := s.Header()
				if got := hdr["x-hdr"]; sendHeaders != (len(got) == 1) {
					t.Errorf("headers = %v, want x-hdr only if sent", hdr)
				}
			})
		}
	}
}

// TestStreamBatches checks that the messages a client streams faster than
// one capnp call each ride in batches: many fewer Sink.send calls than
// messages, and every message arrives.
func TestStreamBatches(t *testing.T) {
	b := newBackend(t)
	h := newHop(t, b.addr, hopConfig{})
	recorded := recordCalls(h.in)
	cc := dial(t, h.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 4000
	s := rawStream(ctx, t, cc, "/t.T/Hash")
	msg := pattern(1 << 10)
	for range n {
		if err := s.SendMsg(msg); err != nil {
			t.Fatal(err)
		}
	}
	s.CloseSend()
	got, err := recvAll(s)
	if err != nil || len(got) != 1 {
		t.Fatalf("Hash: %v", err)
	}
	if count := binary.BigEndian.Uint64(got[0][32:]); count != n<<10 {
		t.Fatalf("backend got %d bytes, want %d", count, n<<10)
	}
	calls := recorded()
	if len(calls) != 1 {
		t.Fatalf("%d ingress calls, want 1", len(calls))
	}
	sends, msgs := calls[0].upStats.sends.Load(), calls[0].upStats.messages.Load()
	if msgs != n {
		t.Errorf("sender completed %d messages, want %d", msgs, n)
	}
	if sends > n/4 {
		t.Errorf("%d Sink.send calls for %d messages, want batches (at most %d calls)", sends, n, n/4)
	}
	t.Logf("%d messages in %d sends (%.1f per send)", msgs, sends, float64(msgs)/float64(sends))
}

// TestGzipClient checks that a client compressing its messages with gzip is
// served, on both paths.
func TestGzipClient(t *testing.T) {
	b := newBackend(t)
	h := newHop(t, b.addr, hopConfig{})
	cc := dial(t, h.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	msg := bytes.Repeat([]byte("compressible "), 1000)
	var got []byte
	if err := cc.Invoke(ctx, "/t.T/Echo", msg, &got, grpc.ForceCodecV2(Codec()), grpc.UseCompressor("gzip")); err != nil {
		t.Fatalf("unary with gzip: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("unary with gzip: reply differs")
	}
	echoBidiOpts(ctx, t, cc, testMessages(5), grpc.UseCompressor("gzip"))
}

// TestServerEndsFirst checks a backend that answers and ends while the
// client is still sending: the client gets the answer and OK, and nothing
// hangs on either side.
func TestServerEndsFirst(t *testing.T) {
	b := newBackend(t)
	h := newHop(t, b.addr, hopConfig{})
	cc := dial(t, h.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := rawStream(ctx, t, cc, "/t.T/First")
	first := pattern(100)
	if err := s.SendMsg(first); err != nil {
		t.Fatal(err)
	}
	var got []byte
	if err := s.RecvMsg(&got); err != nil || !bytes.Equal(got, first) {
		t.Fatalf("RecvMsg: %v", err)
	}
	for i := 0; i < 2000; i++ { // io.EOF once the end has reached the client
		if err := s.SendMsg(pattern(1 << 10)); err != nil {
			break
		}
	}
	if rest, err := recvAll(s); err != nil || len(rest) != 0 {
		t.Fatalf("after the answer: %d messages, %v; want none and OK", len(rest), err)
	}
}
