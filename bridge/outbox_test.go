package bridge

import (
	"context"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
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

// TestOutboxRecycle checks that arrays a consumer gives back hold later
// events without touching the ones it still has: a stream's batches take
// turns in two arrays, allocate nothing once both exist, large arrays are
// not kept, and a stopped outbox keeps none.
func TestOutboxRecycle(t *testing.T) {
	ctx := context.Background()
	o := newOutbox(1 << 20)
	msg := func(b byte) event {
		return event{kind: evMsg, msg: frame{data: mem.BufferSlice{mem.SliceBuffer([]byte{b})}}}
	}
	first := func(evs []event) byte { return evs[0].msg.data[0].ReadOnlyData()[0] }

	o.put(ctx, msg(1))
	a := o.take(ctx)
	o.put(ctx, msg(2)) // into a new array: a is the consumer's
	if first(a) != 1 {
		t.Fatalf("taken event changed to %d by a put", first(a))
	}
	o.recycle(a) // items holds an event: a becomes the spare
	b := o.take(ctx)
	if first(b) != 2 {
		t.Fatalf("second take: %d, want 2", first(b))
	}
	o.put(ctx, msg(3)) // into a
	o.recycle(b)       // the spare
	c := o.take(ctx)
	if &c[0] != &a[:1][0] || first(c) != 3 {
		t.Fatal("a put after a take did not reuse the recycled array")
	}
	o.recycle(c)
	if n := testing.AllocsPerRun(100, func() {
		o.put(ctx, event{kind: evHeaders}) // an event that allocates nothing itself
		o.recycle(o.take(ctx))
	}); n != 0 {
		t.Errorf("put, take, recycle: %v allocations, want 0", n)
	}

	big := make([]event, 0, recycleMax+1)
	o.poll()
	o.recycle(big)
	o.put(ctx, msg(5))
	if got := o.take(ctx); cap(got) > recycleMax {
		t.Errorf("an array of %d events was kept (at most %d)", cap(got), recycleMax)
	}

	o.put(ctx, msg(6))
	taken := o.take(ctx)
	o.put(ctx, msg(7))
	o.recycle(taken) // items in use: the recycled array is parked as the spare
	if o.spare == nil {
		t.Fatal("no spare array parked")
	}
	o.stop()
	if o.items != nil || o.spare != nil {
		t.Error("a stopped outbox kept an array")
	}
	o.recycle(make([]event, 0, 1))
	if o.items != nil || o.spare != nil {
		t.Error("a stopped outbox kept a recycled array")
	}
}
