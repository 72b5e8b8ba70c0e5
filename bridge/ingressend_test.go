package bridge

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
)

// isClosed reports whether ch is closed (it is never sent on).
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// TestIngressEndFirstReportWins checks how an ingress call learns its end,
// whichever of deliver and the waiter comes first: the channel closes once,
// the first report is the one kept, and every report stops the request
// direction's sender.
func TestIngressEndFirstReportWins(t *testing.T) {
	first := final{st: status.New(codes.Aborted, "first")}
	second := final{st: status.New(codes.Internal, "second"), lost: true}
	for _, waitFirst := range []bool{true, false} {
		name := "deliver first"
		if waitFirst {
			name = "wait first"
		}
		t.Run(name, func(t *testing.T) {
			c := &ingressCall{}
			stops := 0
			c.onEnd(func() { stops++ })
			var ended <-chan struct{}
			if waitFirst {
				ended = c.endedChan()
				if isClosed(ended) {
					t.Fatal("ended before any report")
				}
			}
			c.deliver(first)
			if !waitFirst {
				ended = c.endedChan()
			}
			if !isClosed(ended) {
				t.Fatal("not ended after deliver")
			}
			c.deliver(second) // must neither win nor close again (a panic)
			if got := c.report(); got.st != first.st || got.lost {
				t.Errorf("final = %v (lost %v), want the first report %v", got.st, got.lost, first.st)
			}
			if again := c.endedChan(); again != ended {
				t.Error("endedChan changed after the end")
			}
			if stops != 2 {
				t.Errorf("sender stopped %d times, want once per report (2)", stops)
			}
		})
	}
}

// TestIngressUnaryMakesNoEndChannel checks that a unary call answered in
// its reply never makes the channel a streaming response waits on (two
// allocations per call), while a stream still ends through it.
func TestIngressUnaryMakesNoEndChannel(t *testing.T) {
	b := newBackend(t)
	h := knownHop(t, b.addr, Kinds{"/t.T/Echo": KindUnary}, hopConfig{})
	recorded := recordCalls(h.in)
	cc := dial(t, h.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var got []byte
	if err := cc.Invoke(ctx, "/t.T/Echo", pattern(100), &got, grpc.ForceCodecV2(Codec())); err != nil {
		t.Fatalf("unary: %v", err)
	}
	if len(got) != 100 {
		t.Fatalf("unary reply: %d bytes, want 100", len(got))
	}
	echoBidi(ctx, t, cc, testMessages(3)) // three messages: the stream path
	calls := recorded()
	if len(calls) != 2 {
		t.Fatalf("%d calls, want 2", len(calls))
	}
	unary, stream := calls[0], calls[1]
	unary.mu.Lock()
	defer unary.mu.Unlock()
	if unary.endedCh != nil {
		t.Error("a unary call made an end channel")
	}
	stream.mu.Lock()
	defer stream.mu.Unlock()
	if stream.endedCh == nil || !isClosed(stream.endedCh) || stream.fin.st.Code() != codes.OK {
		t.Errorf("stream: end channel %v, status %v; want closed, OK", stream.endedCh, stream.fin.st)
	}
}

// TestYieldToPumpIsBounded checks that the probe of a call of unknown kind
// gives the request's reader a few turns at most, whatever the client
// sent: it stops once a unary request is in, once what came cannot be one,
// and when a turn brought nothing.
func TestYieldToPumpIsBounded(t *testing.T) {
	ctx := context.Background()
	msg := func(n int) event {
		return event{kind: evMsg, msg: frame{data: mem.BufferSlice{mem.SliceBuffer(make([]byte, n))}}}
	}
	for _, c := range []struct {
		name   string
		evs    []event
		yields int
	}{
		{"nothing sent", nil, 2}, // no progress on the second turn
		{"request in", []event{msg(10), {kind: evEnd}}, 1},
		{"too large for one", []event{msg(inlineMax + 1)}, 1},
		{"one message, no half-close", []event{msg(10)}, 2},
		{"two messages", []event{msg(10), msg(10)}, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			call := &ingressCall{}
			call.obox.init(queueBytes)
			call.ob = &call.obox
			for _, ev := range c.evs {
				if !call.ob.put(ctx, ev) {
					t.Fatal("put refused")
				}
			}
			if got := call.yieldToPump(); got != c.yields {
				t.Errorf("%d yields, want %d", got, c.yields)
			}
		})
	}
}
