package bridge

import (
	"context"
	"time"
)

// Inline sends: on a sparse stream (one message in flight, a ping-pong
// exchange) the goroutine that reads a message sends it itself, with the
// sender's right to send lent to it by the outbox, instead of waking the
// sender's goroutine for each message. A dense stream, whose reader finds
// the next message already buffered, queues as before and keeps its
// batches. See "The ping-pong stream path" in docs/design.md.

// send is put for a message, which, when sparse (the producer had to wait
// for it) and the consumer waits with nothing queued, the producer sends
// itself with the consumer's sender (sender.sendInline) instead of waking
// the consumer's goroutine for it: a ping-pong stream then costs no
// goroutine hand-off per message. A message that cannot go at once (its
// window is full, the Sink is no direct target yet) is queued. quiet
// reports that, as send returns, the consumer has nothing queued because
// of ev: the producer may time its next wait.
func (o *outbox) send(ctx context.Context, ev event, sparse bool) (ok, quiet bool) {
	if !sparse {
		return o.putQuiet(ctx, ev)
	}
	o.mu.Lock()
	if o.snd == nil || !o.idle || len(o.items) > 0 || o.stopped || o.failed != nil {
		o.mu.Unlock()
		return o.putQuiet(ctx, ev)
	}
	s := o.snd
	o.lent = true
	n := ev.cost() // counted until the send reports it copied (done), as queued
	o.bytes += n
	o.peak = max(o.peak, o.bytes)
	o.mu.Unlock()
	sent, err := s.sendInline(ev)
	o.mu.Lock()
	o.lent = false
	if err != nil && o.failed == nil {
		o.failed = err
	}
	// The consumer, if it stopped waiting meanwhile, waits for the lend
	// to end (take, detach).
	var wake chan struct{}
	if err != nil || !o.idle {
		wake = o.wake
	}
	quiet = o.idle
	if !sent {
		if o.stopped {
			o.bytes -= n
			o.mu.Unlock()
			signal(wake)
			ev.msg.free()
			return false, false
		}
		// Counted already; nothing else is queued or in the
		// consumer's hand.
		o.items = append(o.items, ev)
		wake = o.wake
	}
	o.mu.Unlock()
	signal(wake)
	return true, quiet
}

// attach makes s, the consumer's sender, the one send lends to the
// producer.
func (o *outbox) attach(s *sender) {
	o.mu.Lock()
	o.snd = s
	o.mu.Unlock()
}

// detach undoes attach, once any lend has ended: the sender is the
// consumer's alone from its return.
func (o *outbox) detach() {
	o.mu.Lock()
	o.quietLocked()
	o.snd = nil
	o.mu.Unlock()
}

// quietLocked marks the consumer busy and waits until no lend is under
// way; mu is held on entry and on return.
func (o *outbox) quietLocked() {
	o.idle = false
	for o.lent {
		wake := waitChan(&o.wake)
		o.mu.Unlock()
		<-wake
		o.mu.Lock()
	}
}

// sendErr returns the failure of an inline send (send), which ended take.
func (o *outbox) sendErr() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.failed
}

// sparseWait is how long a reader's wait for a message must have been for
// the stream to count as sparse (outbox.send): a message gRPC had already
// buffered is read in a microsecond or two; one that had to come from the
// peer took a round trip.
const sparseWait = 20 * time.Microsecond

// sparseClock times a stream reader's wait for its next message, from the
// moment its last one left the outbox with nothing queued (a reader that
// left a queue behind is ahead of its sender: it needs no timing, and
// reads no clock). The zero sparseClock is ready; one goroutine uses it.
type sparseClock struct {
	since time.Time // zero: not timing
}

// start starts timing the next wait if quiet (outbox.send's).
func (c *sparseClock) start(quiet bool) {
	if quiet {
		c.since = time.Now()
	} else {
		c.since = time.Time{}
	}
}

// waited reports that the wait timed since start was at least sparseWait.
func (c *sparseClock) waited() bool {
	return !c.since.IsZero() && time.Since(c.since) >= sparseWait
}
