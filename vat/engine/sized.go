package engine

import (
	"context"
	"math/bits"
	"sync"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// A call whose parameters are large (a stream's batch, a unary request of
// many KiB) is costly to build on go-capnp's SingleSegment(nil): the
// segment grows by a quarter at a time, each step a fresh buffer, a copy
// of everything so far and a zeroing of the old buffer, so every byte is
// copied and cleared about five times (40% of an exporting sidecar's CPU on
// a stream of 1 KiB messages: memmove and memclr). Its buffer pool also
// misfiles buffers of sizes that are not powers of two (a Get that misses
// makes one of exactly the size asked, and Put files it one bucket lower
// than that size's Get looks), so those buckets fill until the garbage
// collector empties them; a sidecar carrying one 1 KiB stream held 180 MiB
// of such buffers, all live to the collector.
//
// A caller that knows about how large the parameters will be says so with
// WithSizeHint: the message is then built in one buffer of a power-of-two
// size from sizedPools, big enough for the hint, and the buffer goes back
// to its pool once the message is sent.

// minSizeHint is the smallest hint worth a pooled buffer: below it the
// default arena grows only a few times.
const minSizeHint = 8 << 10

// maxSizedShift is the largest pooled buffer, 16 MiB.
const maxSizedShift = 24

// hintSlack is added to a hint for the message's own structure (the
// Message, Call and Payload structs, the target) beyond the parameters.
const hintSlack = 1 << 10

// sizedPools[i] holds buffers of capacity 1<<i, as *sizedBuf.
var sizedPools [maxSizedShift + 1]sync.Pool

type sizedBuf struct{ b []byte }

type sizeHintKey struct{}

// WithSizeHint returns ctx carrying a hint for calls made with it: their
// parameters will take about n bytes. The engine then builds the call in
// one buffer of at least n bytes. If the parameters turn out larger, the
// engine builds the call again without the hint, calling the place
// function a second time: a caller that gives a hint must have a place
// function that can run twice and puts no capabilities in the parameters.
func WithSizeHint(ctx context.Context, n int) context.Context {
	return context.WithValue(ctx, sizeHintKey{}, n)
}

func sizeHint(ctx context.Context) int {
	if ctx == nil {
		return 0
	}
	n, _ := ctx.Value(sizeHintKey{}).(int)
	return n
}

// getSized returns a buffer of capacity at least n (a power of two), or nil
// if n is over the largest pooled size.
func getSized(n int) *sizedBuf {
	shift := bits.Len(uint(n - 1))
	if shift > maxSizedShift {
		return nil
	}
	if sb, ok := sizedPools[shift].Get().(*sizedBuf); ok {
		return sb
	}
	return &sizedBuf{b: make([]byte, 0, 1<<shift)}
}

// putSized pools sb. It is not cleared: go-capnp zeroes every object it
// allocates in a segment (alloc), and writes only a segment's length.
func putSized(sb *sizedBuf) {
	sizedPools[bits.Len(uint(cap(sb.b)))-1].Put(sb)
}

// callMessages pools the Messages calls are built in (buildCall): a Call
// is released once encoded (the Codec copies it), so its Message can carry
// the next call instead of a new one per call. Only sizedMessage's own
// messages go here, each by its one release.
var callMessages = sync.Pool{New: func() any { return new(capnp.Message) }}

// newCallMessage is capnp.NewMessage(arena) on a pooled Message, to be
// released by sizedMessage.release.
func newCallMessage(arena capnp.Arena) (*capnp.Message, *capnp.Segment, error) {
	msg := callMessages.Get().(*capnp.Message)
	seg, err := msg.Reset(arena)
	if err != nil {
		msg.Release() // releases arena; msg is not pooled again
		return nil, nil, err
	}
	return msg, seg, nil
}

// sizedMessage is a message being built (newCallMessage), in a pooled
// buffer if buf is set.
type sizedMessage struct {
	msg *capnp.Message
	buf *sizedBuf
}

// newSizedMessage starts a message in a pooled buffer of at least n bytes
// (plus hintSlack). ok is false when n is not worth it or too large: the
// caller uses newMessage.
func newSizedMessage(n int) (sm sizedMessage, m rpccp.Message, ok bool, err error) {
	if n < minSizeHint {
		return sizedMessage{}, rpccp.Message{}, false, nil
	}
	sb := getSized(n + hintSlack)
	if sb == nil {
		return sizedMessage{}, rpccp.Message{}, false, nil
	}
	// SingleSegment on a buffer of our own allocates only within its
	// capacity (it never asks go-capnp's pool for more).
	msg, seg, err := newCallMessage(capnp.SingleSegment(sb.b[:0]))
	if err != nil {
		putSized(sb)
		return sizedMessage{}, rpccp.Message{}, false, err
	}
	sm = sizedMessage{msg: msg, buf: sb}
	if m, err = rpccp.NewRootMessage(seg); err != nil {
		sm.release()
		return sizedMessage{}, rpccp.Message{}, false, err
	}
	return sm, m, true, nil
}

// spare is how many bytes the pooled buffer has left.
func (sm sizedMessage) spare() int {
	seg, err := sm.msg.Segment(0)
	if err != nil {
		return 0
	}
	d := seg.Data()
	return cap(d) - len(d)
}

// release releases the message and pools it and its buffer. It runs once
// per sizedMessage: the message may carry another call at once.
func (sm sizedMessage) release() {
	if sm.msg != nil {
		// Release truncates the cap table but keeps its array, and with it
		// the released clients: a message that carried capabilities (rare)
		// is not pooled, so the pool keeps none reachable.
		caps := sm.msg.CapTable().Len()
		sm.msg.Release()
		if caps == 0 {
			callMessages.Put(sm.msg)
		}
	}
	if sm.buf != nil {
		putSized(sm.buf)
	}
}
