package bridge

import (
	"context"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// kinds returns the kinds of evs, for comparing event lists.
func kinds(evs []event) []evKind {
	out := make([]evKind, len(evs))
	for i := range evs {
		out[i] = evs[i].kind
	}
	return out
}

// TestOutboxFirstArray checks that the events a consumer took from an
// outbox's first array stay as they were while the producer goes on, that
// events given back (unget) come first and in order, and that wait and
// peek leave the events queued.
func TestOutboxFirstArray(t *testing.T) {
	ctx := context.Background()
	o := newOutbox(1 << 20)
	end := status.New(codes.NotFound, "x")
	o.put(ctx, event{kind: evHeaders})
	o.put(ctx, event{kind: evEnd, st: end})
	if !o.wait(ctx) {
		t.Fatal("wait with events queued: false")
	}
	if n, sh := o.peek(); n != 2 || sh != shapeWhole {
		t.Fatalf("peek = %d, %v; want 2 events, a whole reply", n, sh)
	}
	first := o.poll()
	if got := kinds(first); !slices.Equal(got, []evKind{evHeaders, evEnd}) || first[1].st != end {
		t.Fatalf("poll = %v, want headers, end", got)
	}
	for range 5 { // past the first array's room
		o.put(ctx, event{kind: evMsg})
	}
	if first[0].kind != evHeaders || first[1].kind != evEnd || first[1].st != end {
		t.Fatalf("taken events changed by later puts: %v", kinds(first))
	}
	o.unget(first)
	all := o.take(ctx)
	want := []evKind{evHeaders, evEnd, evMsg, evMsg, evMsg, evMsg, evMsg}
	if got := kinds(all); !slices.Equal(got, want) {
		t.Fatalf("after unget: %v, want %v", got, want)
	}
	o.stop()
	if o.wait(ctx) {
		t.Error("wait on a stopped outbox: true")
	}
}

// TestOutboxWaitEndsWithContext checks that wait returns false once its
// context ends, with nothing queued.
func TestOutboxWaitEndsWithContext(t *testing.T) {
	o := newOutbox(1 << 20)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if o.wait(ctx) {
		t.Error("wait with an ended context and no events: true")
	}
	if n, _ := o.peek(); n != 0 {
		t.Errorf("peek = %d events, want 0", n)
	}
}
