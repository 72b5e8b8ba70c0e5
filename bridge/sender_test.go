package bridge

import (
	"context"
	"sync"
	"testing"

	"capnproto.org/go/capnp/v3/server"
	"google.golang.org/grpc/mem"

	"github.com/vatcar/vatcar/proto/captp"
)

// sizeSink is a Sink server that records the size of each send's capnp
// message and counts the messages completed.
type sizeSink struct {
	mu       sync.Mutex
	maxSize  uint64
	sends    int
	messages int
	closed   bool
}

func (s *sizeSink) Headers(context.Context, captp.Sink_headers) error { return nil }

func (s *sizeSink) Send(_ context.Context, call captp.Sink_send) error {
	size, err := call.Args().Message().TotalSize()
	if err != nil {
		return err
	}
	l, err := call.Args().Chunks()
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.maxSize = max(s.maxSize, size)
	s.sends++
	for i := 0; i < l.Len(); i++ {
		if l.At(i).End() {
			s.messages++
		}
	}
	return nil
}

func (s *sizeSink) Close(context.Context, captp.Sink_close) error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	return nil
}

// TestSenderBoundsBatches queues messages the sender must split into
// several sends: many empty ones, and large ones. Every send stays near
// batchBytes, whatever the mix, and every message arrives.
func TestSenderBoundsBatches(t *testing.T) {
	cases := []struct {
		name  string
		sizes []int
	}{
		{"empty messages", make([]int, 300_000)},
		{"large messages", []int{10 << 20, 1, 5 << 20, 0, 3<<20 + 5}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := &sizeSink{}
			sink := captp.Sink_ServerToClient(rec)
			defer sink.Release()
			ob := newOutbox(1 << 62) // hold everything: one take gets it all
			ctx := context.Background()
			for _, n := range c.sizes {
				ob.put(ctx, event{kind: evMsg, msg: frame{data: mem.BufferSlice{mem.SliceBuffer(pattern(n))}}})
			}
			ob.put(ctx, event{kind: evEnd})
			s := sender{sink: sink, ob: ob}
			if err := s.run(ctx); err != nil {
				t.Fatal(err)
			}
			rec.mu.Lock()
			defer rec.mu.Unlock()
			if rec.messages != len(c.sizes) || !rec.closed {
				t.Errorf("%d messages arrived (closed %v), want %d", rec.messages, rec.closed, len(c.sizes))
			}
			if limit := uint64(batchLimit + 64<<10); rec.maxSize > limit {
				t.Errorf("a send made a %d-byte capnp message, want at most %d", rec.maxSize, limit)
			}
			if ob.bytes != 0 {
				t.Errorf("outbox still counts %d bytes after everything was sent", ob.bytes)
			}
			t.Logf("%d sends, largest %d bytes", rec.sends, rec.maxSize)
		})
	}
}

// TestSinkRefusesAfterClose checks that a Sink takes nothing after its
// close: a peer cannot slip messages in after the end of a direction.
func TestSinkRefusesAfterClose(t *testing.T) {
	var got int
	tg := &recordTarget{onMessage: func(f *frame) { got++; f.free() }}
	sink := sinkClient(&sinkServer{t: tg, maxMsg: 1 << 20}, nil)
	defer sink.Release()
	ctx := context.Background()
	send := func() error {
		if err := sink.Send(ctx, func(p captp.Sink_send_Params) error {
			l, err := p.NewChunks(1)
			if err != nil {
				return err
			}
			l.At(0).SetEnd(true)
			return nil
		}); err != nil {
			return err
		}
		return sink.WaitStreaming()
	}
	closeSink := func() error {
		f, release := sink.Close(ctx, nil)
		defer release()
		_, err := f.Struct()
		return err
	}
	if err := send(); err != nil || got != 1 {
		t.Fatalf("send: %v, %d messages", err, got)
	}
	if err := closeSink(); err != nil {
		t.Fatal(err)
	}
	if err := send(); err == nil || got != 1 {
		t.Errorf("send after close: %v, %d messages; want an error and still 1", err, got)
	}
	if err := closeSink(); err == nil {
		t.Error("a second close was taken")
	}
}

// TestLazyReturn checks LazyReturn against the generated schema: of every
// method of GrpcService, Call and Sink, only Sink.send (a `-> stream`
// method) has lazy Returns.
func TestLazyReturn(t *testing.T) {
	var methods []server.Method
	methods = captp.GrpcService_Methods(methods, nil)
	methods = captp.Call_Methods(methods, nil)
	methods = captp.Sink_Methods(methods, nil)
	lazy := 0
	for _, m := range methods {
		want := m.InterfaceName == "bridge.capnp:Sink" && m.MethodName == "send"
		if got := LazyReturn(m.InterfaceID, m.MethodID); got != want {
			t.Errorf("LazyReturn(%s.%s) = %v, want %v", m.InterfaceName, m.MethodName, got, want)
		}
		if want {
			lazy++
		}
	}
	if lazy != 1 {
		t.Errorf("%d methods named Sink.send among %d, want 1", lazy, len(methods))
	}
}
