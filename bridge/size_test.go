package bridge

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/vatcar/vatcar/proto/captp"
)

// TestLargeMessages sends 16, 64 and 200 MiB messages through the bridge
// (the backend answers their hash) and gets 16 and 64 MiB ones back.
func TestLargeMessages(t *testing.T) {
	b := newBackend(t)
	h := newHop(t, b.addr, hopConfig{
		ingress: IngressConfig{MaxMessageSize: 256 << 20},
		egress:  EgressConfig{MaxMessageSize: 256 << 20},
	})
	cc := dial(t, h.addr)
	// Several copies of a 200 MiB message are alive at once (client,
	// ingress, egress, backend); collect garbage early to keep the peak
	// down, especially under the race detector.
	defer debug.SetGCPercent(debug.SetGCPercent(25))
	for _, mib := range []int{16, 64, 200} {
		t.Run(fmt.Sprint(mib, "MiB"), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
			defer cancel()
			msg := pattern(mib << 20)
			s := rawStream(ctx, t, cc, "/t.T/Hash")
			if err := s.SendMsg(msg); err != nil {
				t.Fatal(err)
			}
			s.CloseSend()
			got, err := recvAll(s)
			if err != nil || len(got) != 1 {
				t.Fatalf("Hash: %d messages, %v", len(got), err)
			}
			sum := sha256.Sum256(msg)
			want := binary.BigEndian.AppendUint64(sum[:], uint64(len(msg)))
			if !bytes.Equal(got[0], want) {
				t.Fatalf("the backend got different bytes")
			}
			if mib > 64 {
				return // once is enough for memory's sake
			}
			s = rawStream(ctx, t, cc, "/t.T/Produce")
			s.SendMsg(binary.BigEndian.AppendUint64(nil, uint64(len(msg))))
			s.CloseSend()
			got, err = recvAll(s)
			if err != nil || len(got) != 1 || !bytes.Equal(got[0], msg) {
				t.Fatalf("Produce: %d messages, %v (or the bytes differ)", len(got), err)
			}
		})
	}
}

// TestOversizeFailsOneCall checks that a message over MaxMessageSize fails
// its call alone with RESOURCE_EXHAUSTED, in each direction and place, and
// the connection goes on serving calls.
func TestOversizeFailsOneCall(t *testing.T) {
	b := newBackend(t)
	const max = 1 << 20
	cases := []struct {
		name string
		cfg  hopConfig
		call func(ctx context.Context, cc *grpc.ClientConn) error
	}{
		{"request over the ingress limit", hopConfig{ingress: IngressConfig{MaxMessageSize: max}}, func(ctx context.Context, cc *grpc.ClientConn) error {
			s := rawStream(ctx, t, cc, "/t.T/Hash")
			s.SendMsg(pattern(max + 1))
			s.CloseSend()
			_, err := recvAll(s)
			return err
		}},
		{"request over the egress limit", hopConfig{ingress: IngressConfig{MaxMessageSize: 8 * max}, egress: EgressConfig{MaxMessageSize: max}}, func(ctx context.Context, cc *grpc.ClientConn) error {
			s := rawStream(ctx, t, cc, "/t.T/Hash")
			s.SendMsg(pattern(3 * max))
			s.SendMsg(pattern(1))
			s.CloseSend()
			_, err := recvAll(s)
			return err
		}},
		{"response over the egress limit", hopConfig{egress: EgressConfig{MaxMessageSize: max}}, func(ctx context.Context, cc *grpc.ClientConn) error {
			s := rawStream(ctx, t, cc, "/t.T/Produce")
			s.SendMsg(binary.BigEndian.AppendUint64(nil, max+1))
			s.CloseSend()
			_, err := recvAll(s)
			return err
		}},
		{"response over the ingress limit", hopConfig{ingress: IngressConfig{MaxMessageSize: max}, egress: EgressConfig{MaxMessageSize: 8 * max}}, func(ctx context.Context, cc *grpc.ClientConn) error {
			s := rawStream(ctx, t, cc, "/t.T/Produce")
			s.SendMsg(binary.BigEndian.AppendUint64(nil, 3*max))
			s.CloseSend()
			_, err := recvAll(s)
			return err
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHop(t, b.addr, c.cfg)
			cc := dial(t, h.addr)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if err := c.call(ctx, cc); status.Code(err) != codes.ResourceExhausted {
				t.Errorf("got %v, want ResourceExhausted", err)
			}
			echoBidi(ctx, t, cc, testMessages(3)) // the connection still works
		})
	}
}

// TestSlowConsumerBoundsMemory streams far more than the bridge may buffer
// to a backend that reads slowly, and checks that the sender was held back:
// the bytes sent but not yet consumed, and the bytes the ingress queued,
// stay under their bounds.
func TestSlowConsumerBoundsMemory(t *testing.T) {
	const (
		msgSize = 256 << 10
		total   = 96 << 20
		window  = 64 << 10 // static HTTP/2 windows: no BDP growth
	)
	b := newBackend(t, grpc.StaticStreamWindowSize(window), grpc.StaticConnWindowSize(window))
	b.slow = 2 * time.Millisecond
	h := newHop(t, b.addr, hopConfig{
		serverOpts: []grpc.ServerOption{grpc.StaticStreamWindowSize(window), grpc.StaticConnWindowSize(window)},
		dialOpts:   []grpc.DialOption{grpc.WithStaticStreamWindowSize(window), grpc.WithStaticConnWindowSize(window)},
	})
	recorded := recordCalls(h.in)
	cc := dial(t, h.addr, grpc.WithStaticStreamWindowSize(window), grpc.WithStaticConnWindowSize(window))
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	s := rawStream(ctx, t, cc, "/t.T/Slow")
	msg := pattern(msgSize)
	var sent, ahead atomic.Int64
	for sent.Load() < total {
		if err := s.SendMsg(msg); err != nil {
			t.Fatal(err)
		}
		n := sent.Add(msgSize)
		ahead.Store(max(ahead.Load(), n-b.consumed.Load()))
	}
	s.CloseSend()
	if got, err := recvAll(s); err != nil || len(got) != 1 {
		t.Fatalf("Slow: %v", err)
	}
	if b.consumed.Load() != total {
		t.Fatalf("backend consumed %d bytes, want %d", b.consumed.Load(), total)
	}
	// What may be in flight: the ingress queue (queueBytes plus a message),
	// the capnp flow window, the batch the egress is writing, and the small
	// HTTP/2 windows and buffers on either side.
	bound := int64(queueBytes + msgSize + flowWindow + 2*batchLimit + 8*msgSize)
	if a := ahead.Load(); a > bound {
		t.Errorf("the client got %d bytes ahead of the backend, want at most %d", a, bound)
	}
	calls := recorded()
	if len(calls) != 1 {
		t.Fatalf("%d ingress calls, want 1", len(calls))
	}
	if p := calls[0].ob.peakBytes(); p > queueBytes+msgSize {
		t.Errorf("the ingress queued up to %d bytes, want at most %d", p, queueBytes+msgSize)
	}
	t.Logf("client ahead of backend by at most %d KiB (bound %d KiB, total %d KiB); ingress queue peak %d KiB",
		ahead.Load()>>10, bound>>10, total>>10, calls[0].ob.peakBytes()>>10)
}

// TestSlowClientBoundsMemory is the other direction: the backend floods
// a client that reads slowly, and gets only a bounded amount ahead.
func TestSlowClientBoundsMemory(t *testing.T) {
	const (
		msgSize = 256 << 10
		count   = 384 // 96 MiB
		window  = 64 << 10
	)
	b := newBackend(t, grpc.StaticStreamWindowSize(window), grpc.StaticConnWindowSize(window))
	h := newHop(t, b.addr, hopConfig{
		serverOpts: []grpc.ServerOption{grpc.StaticStreamWindowSize(window), grpc.StaticConnWindowSize(window)},
		dialOpts:   []grpc.DialOption{grpc.WithStaticStreamWindowSize(window), grpc.WithStaticConnWindowSize(window)},
	})
	cc := dial(t, h.addr, grpc.WithStaticStreamWindowSize(window), grpc.WithStaticConnWindowSize(window))
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	s := rawStream(ctx, t, cc, "/t.T/Flood")
	req := binary.BigEndian.AppendUint64(nil, count)
	s.SendMsg(binary.BigEndian.AppendUint64(req, msgSize))
	s.CloseSend()
	var received, ahead int64
	for {
		var m []byte
		err := s.RecvMsg(&m)
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			break
		}
		received += int64(len(m))
		ahead = max(ahead, b.produced.Load()-received)
		time.Sleep(2 * time.Millisecond) // a slow client, not a wait
	}
	if received != count*msgSize {
		t.Fatalf("received %d bytes, want %d", received, count*msgSize)
	}
	// The egress queue, the capnp flow window, the batch the ingress is
	// writing, and the small HTTP/2 windows and buffers.
	bound := int64(queueBytes + msgSize + flowWindow + 2*batchLimit + 8*msgSize)
	if ahead > bound {
		t.Errorf("the backend got %d bytes ahead of the client, want at most %d", ahead, bound)
	}
	t.Logf("backend ahead of client by at most %d KiB (bound %d KiB, total %d KiB)", ahead>>10, bound>>10, received>>10)
}

// TestOversizeTailNotDelivered checks that after a message was refused for
// its size, its remaining chunks are not taken for a message of their own.
func TestOversizeTailNotDelivered(t *testing.T) {
	var got []int
	tg := &recordTarget{onMessage: func(f *frame) { got = append(got, f.data.Len()); f.free() }}
	s := &sinkServer{t: tg, maxMsg: 3 << 20 / 2}
	sink := sinkClient(s, nil)
	defer sink.Release()
	ctx := context.Background()
	for i, end := range []bool{false, false, true} { // one 3 MiB message in 1 MiB chunks
		err := sink.Send(ctx, func(p captp.Sink_send_Params) error {
			l, err := p.NewChunks(1)
			if err != nil {
				return err
			}
			l.At(0).SetEnd(end)
			return l.At(0).SetData(make([]byte, 1<<20))
		})
		if err != nil {
			t.Logf("send %d: %v", i, err)
		}
	}
	if err := sink.WaitStreaming(); err == nil {
		t.Error("the oversize message was not refused")
	}
	if len(got) != 0 {
		t.Errorf("delivered messages of %v bytes, want none", got)
	}
	if len(tg.losses) != 1 || !errors.Is(tg.losses[0], ErrMessageTooLarge) {
		t.Errorf("lost = %v, want one ErrMessageTooLarge", tg.losses)
	}
}

// recordTarget is a target that records what it is given.
type recordTarget struct {
	onMessage func(*frame)
	losses    []error
}

func (r *recordTarget) header(metadata.MD) error        { return nil }
func (r *recordTarget) message(f *frame) error          { r.onMessage(f); return nil }
func (r *recordTarget) end(*status.Status, metadata.MD) {}
func (r *recordTarget) lost(err error)                  { r.losses = append(r.losses, err) }
