package bridge

import (
	"context"
	"sync"

	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// evKind says what an event carries.
type evKind uint8

const (
	evHeaders evKind = iota // response headers (md)
	evMsg                   // one message (msg)
	evEnd                   // end of the direction: half-close (st nil) or final status and trailers
)

// event is one thing that happened on one direction of a gRPC stream.
type event struct {
	kind evKind
	md   metadata.MD // headers, or trailers for evEnd
	msg  frame
	st   *status.Status
}

// size is the number of message bytes an event holds.
func (e *event) size() int { return e.msg.data.Len() }

// chunkOverhead is what a chunk costs in a capnp message beyond its data
// (its struct, list entry and padding), counted so that many small or
// empty messages are bounded like a few large ones.
const chunkOverhead = 32

// cost is what an event counts against queue and batch limits.
func (e *event) cost() int {
	if e.kind != evMsg {
		return 0
	}
	return e.size() + chunkOverhead
}

// outbox is the bounded queue between the goroutine that reads one
// direction of a gRPC stream and the one that writes it to a Sink. It holds
// at most limit bytes of messages (each counted with chunkOverhead; plus one
// message of any size, so a large message still passes): a fast reader
// facing a slow Sink blocks.
//
// Locking: mu guards every field; nothing blocks while holding it. Bytes
// count from put until the sender reports them copied into capnp (done).
// The channels are made by the first side that waits on them, under mu
// (a call on a fast path never waits, and makes none); a side that signals
// reads them under mu, after the change it signals, so a waiter either
// sees the change or made the channel before the signaller looked.
//
// An outbox is safe for one producer and one consumer at a time. The zero
// outbox with a limit set is ready (init).
type outbox struct {
	mu      sync.Mutex
	items   []event
	bytes   int
	peak    int // most bytes ever held, for tests of the memory bound
	limit   int
	stopped bool
	wake    chan struct{} // consumer: something was put or stopped; nil until it waits
	space   chan struct{} // producer: bytes were released or stopped; nil until it waits
	// first is items' first array (init), so a call's first few events
	// (a unary call's headers, message and end) need no allocation of
	// their own. take hands it to the consumer with the events in it;
	// items uses it again only once the consumer gave it back (recycle),
	// so the two never share memory.
	first [3]event
	// spare is an empty array the consumer gave back (recycle), for items
	// once take handed items' over; nil: none. A stream's batches take
	// turns in two arrays rather than each allocating one.
	spare []event
}

// recycleMax bounds the arrays recycle keeps, in events: a burst of small
// messages must not leave a large array with an idle stream.
const recycleMax = 16

func newOutbox(limit int) *outbox {
	o := new(outbox)
	o.init(limit)
	return o
}

// init readies o, which must be new, for limit bytes (an outbox kept in the
// call's own struct costs no allocation of its own).
func (o *outbox) init(limit int) {
	o.limit = limit
	o.items = o.first[:0]
}

// waitChan returns *c, made if nil; mu is held.
func waitChan(c *chan struct{}) chan struct{} {
	if *c == nil {
		*c = make(chan struct{}, 1)
	}
	return *c
}

// signal wakes c's waiter, if c was made.
func signal(c chan struct{}) {
	if c == nil {
		return
	}
	select {
	case c <- struct{}{}:
	default:
	}
}

// put queues ev, waiting while the outbox is full. It returns false (and
// frees ev) when ctx ends or the outbox was stopped.
func (o *outbox) put(ctx context.Context, ev event) bool {
	n := ev.cost()
	for {
		o.mu.Lock()
		if o.stopped {
			o.mu.Unlock()
			ev.msg.free()
			return false
		}
		if o.bytes == 0 || o.bytes+n <= o.limit || n == 0 {
			o.items = append(o.items, ev)
			o.bytes += n
			o.peak = max(o.peak, o.bytes)
			wake := o.wake
			o.mu.Unlock()
			signal(wake)
			return true
		}
		space := waitChan(&o.space)
		o.mu.Unlock()
		select {
		case <-space:
		case <-ctx.Done():
			ev.msg.free()
			return false
		}
	}
}

// load queues evs without waiting, counting their bytes even past the
// limit. It is for the few events a fast path read before the outbox had a
// consumer (at most two messages), which a put could wait on forever.
func (o *outbox) load(evs ...event) {
	o.mu.Lock()
	if o.stopped {
		o.mu.Unlock()
		freeEvents(evs)
		return
	}
	for i := range evs {
		o.bytes += evs[i].cost()
	}
	o.items = append(o.items, evs...)
	o.peak = max(o.peak, o.bytes)
	wake := o.wake
	o.mu.Unlock()
	signal(wake)
}

// take waits for at least one event and removes all queued events. It
// returns nil when ctx ends or the outbox was stopped.
func (o *outbox) take(ctx context.Context) []event {
	for {
		o.mu.Lock()
		if o.stopped {
			o.mu.Unlock()
			return nil
		}
		if len(o.items) > 0 {
			evs := o.items
			o.items, o.spare = o.spare, nil
			o.mu.Unlock()
			return evs
		}
		wake := waitChan(&o.wake)
		o.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return nil
		}
	}
}

// recycle gives back an array take returned, once the consumer is done
// with its events (freed, nothing pointing into it): later events may be
// queued in it. Arrays of more than recycleMax events are left to the
// garbage collector.
func (o *outbox) recycle(evs []event) {
	if cap(evs) == 0 || cap(evs) > recycleMax {
		return
	}
	clear(evs) // drop the references they held (past len: zero already)
	evs = evs[:0]
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case o.stopped:
	case o.items == nil:
		o.items = evs
	case o.spare == nil:
		o.spare = evs
	}
}

// wait waits for at least one event, leaving it queued. It returns false
// when ctx ends or the outbox was stopped.
func (o *outbox) wait(ctx context.Context) bool {
	for {
		o.mu.Lock()
		if o.stopped {
			o.mu.Unlock()
			return false
		}
		if len(o.items) > 0 {
			o.mu.Unlock()
			return true
		}
		wake := waitChan(&o.wake)
		o.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return false
		}
	}
}

// peek returns how many events are queued and what reply they make.
func (o *outbox) peek() (int, replyShape) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.items), shape(o.items)
}

// poll removes all queued events without waiting.
func (o *outbox) poll() []event {
	o.mu.Lock()
	defer o.mu.Unlock()
	evs := o.items
	o.items = nil
	return evs
}

// unget puts events taken earlier back at the front, in order.
func (o *outbox) unget(evs []event) {
	if len(evs) == 0 {
		return
	}
	o.mu.Lock()
	o.items = append(evs, o.items...)
	wake := o.wake
	o.mu.Unlock()
	signal(wake)
}

// done reports n bytes of cost copied out (into capnp or gRPC memory).
func (o *outbox) done(n int) {
	if n == 0 {
		return
	}
	o.mu.Lock()
	o.bytes -= n
	space := o.space
	o.mu.Unlock()
	signal(space)
}

// stop ends the outbox: queued messages are freed, put fails from now on
// and take returns nil. Events already taken are the taker's to free.
func (o *outbox) stop() {
	o.mu.Lock()
	evs := o.items
	o.items, o.spare = nil, nil
	o.stopped = true
	wake, space := o.wake, o.space
	o.mu.Unlock()
	for i := range evs {
		evs[i].msg.free()
	}
	signal(wake)
	signal(space)
}

// peakBytes returns the most message bytes the outbox ever held.
func (o *outbox) peakBytes() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.peak
}
