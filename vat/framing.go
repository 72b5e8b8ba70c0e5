package vat

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/vatcar/vatcar/vat/engine"
)

// An inbound message's stream header claims its size before any of it
// arrives. go-capnp's Decoder allocates the claimed size at once, so a peer
// that claims 60 MiB and then trickles makes the vat hold 60 MiB for
// nothing. The codec therefore reads a large message as it arrives: its
// buffer grows with the bytes received, and the message must be complete
// within largeMessageGrace plus its size at minMessageRate, or the
// connection is dead and closed. Small messages keep go-capnp's pooled
// path.
var (
	// largeMessage is the size above which a message is read as it
	// arrives (unless it has arrived whole): what go-capnp's Decoder may
	// allocate for a header's claim alone.
	largeMessage = firstRead
	// largeMessageGrace and minMessageRate bound how long a large message
	// may take: the grace plus its size at the rate.
	largeMessageGrace = 10 * time.Second
	minMessageRate    = 1 << 20 // bytes per second
)

// firstRead is the first read of a large message: what a peer that claims a
// large message and sends nothing more makes the vat hold.
const firstRead = 64 << 10

// maxStreamSegments is go-capnp's limit on a stream header's segment count
// field (the number of segments less one): its Decoder takes 513 segments.
const maxStreamSegments = 512

// frameReader reads stream-framed capnp messages from br, large ones as
// they arrive (see above). closeConn closes the connection under it: the
// bound on a large message's completion.
type frameReader struct {
	br        *bufio.Reader
	dec       *capnp.Decoder // on br, for small messages
	max       uint64         // the decode limit
	closeConn func() error

	timedOut atomic.Bool // a large message outlived its bound
}

// decode returns the next message.
func (f *frameReader) decode() (*capnp.Message, error) {
	hdrLen, total, err := f.peekSize()
	if err == nil && hdrLen+total > f.max {
		return nil, f.skip(hdrLen, total)
	}
	if err != nil || total <= uint64(largeMessage) || f.br.Buffered() >= int(hdrLen+total) {
		// Small, or already here in full, or refused by the Decoder's own
		// checks (segments), or the stream ended: go-capnp's Decoder.
		return f.dec.Decode()
	}
	return f.decodeLarge(int(hdrLen + total))
}

// errTimedOut stands for the read a closed connection would have failed.
var errTimedOut = errors.New("timed out")

// oversizePrefix is how much of an oversize message's first segment skip
// reads to learn its kind and id: the root Message and its Call or Return
// come first in every implementation's encoding.
const oversizePrefix = 1 << 10

// maxSkipBound is the most of an oversize message's size that counts
// towards the time it may take to arrive.
const maxSkipBound = 1 << 30

// skip reads past a message over the limit without keeping it: the
// header, the first oversizePrefix bytes of its first segment (whence
// engine.ReadMessageTooLarge learns the kind and id), and the rest
// discarded as it arrives. It returns the *engine.MessageTooLarge the
// engine fails one call or question with, or the read error; like a large
// message, an oversize one must arrive within largeMessageGrace plus its
// size (at most maxSkipBound of it) at minMessageRate, or the connection
// is closed.
func (f *frameReader) skip(hdrLen, total uint64) error {
	hdr, err := f.br.Peek(int(hdrLen))
	if err != nil {
		return err
	}
	seg0 := uint64(binary.LittleEndian.Uint32(hdr[4:])) * 8
	e := &engine.MessageTooLarge{Size: hdrLen + total, Limit: f.max}
	bound := largeMessageGrace + time.Duration(min(e.Size, maxSkipBound)/uint64(minMessageRate))*time.Second
	timer := time.AfterFunc(bound, func() {
		f.timedOut.Store(true)
		f.closeConn()
	})
	defer timer.Stop()
	fail := func(err error, arrived uint64) error {
		if f.timedOut.Load() {
			return fmt.Errorf("decode: message of %d bytes over the limit not complete within %v (%d bytes arrived): connection closed", e.Size, bound, arrived)
		}
		return fmt.Errorf("decode: skip a message of %d bytes over the limit: %w", e.Size, err)
	}
	if _, err := f.br.Discard(int(hdrLen)); err != nil {
		return fail(err, 0)
	}
	prefix := make([]byte, min(seg0, oversizePrefix))
	if _, err := io.ReadFull(f.br, prefix); err != nil {
		return fail(err, hdrLen)
	}
	engine.ReadMessageTooLarge(e, prefix)
	arrived := hdrLen + uint64(len(prefix))
	for arrived < e.Size {
		n, err := f.br.Discard(int(min(e.Size-arrived, 1<<30)))
		arrived += uint64(n)
		if err != nil {
			return fail(err, arrived)
		}
	}
	if !timer.Stop() { // the bound passed as the last bytes came
		return fail(errTimedOut, arrived)
	}
	return e
}

// peekSize returns the length of the next message's stream header and the
// size of its segments, without consuming them. An error (or an empty
// message) leaves the Decoder to report it.
func (f *frameReader) peekSize() (hdrLen, total uint64, err error) {
	first, err := f.br.Peek(4)
	if err != nil {
		return 0, 0, err
	}
	maxSeg := binary.LittleEndian.Uint32(first)
	if maxSeg > maxStreamSegments {
		return 0, 0, fmt.Errorf("decode: %d segments", uint64(maxSeg)+1)
	}
	hdrLen = (uint64(maxSeg+2)*4 + 7) &^ 7
	hdr, err := f.br.Peek(int(hdrLen))
	if err != nil {
		return 0, 0, err
	}
	for i := range uint64(maxSeg) + 1 {
		total += uint64(binary.LittleEndian.Uint32(hdr[4+4*i:])) * 8
	}
	return hdrLen, total, nil
}

// decodeLarge reads a message of size bytes (header included), growing its
// buffer with what arrives, and closes the connection if it does not
// complete in time. The buffer comes from largeBuffers and goes back when
// the message is released.
func (f *frameReader) decodeLarge(size int) (*capnp.Message, error) {
	bound := largeMessageGrace + time.Duration(size/minMessageRate)*time.Second
	timer := time.AfterFunc(bound, func() {
		f.timedOut.Store(true)
		f.closeConn()
	})
	full := largeClass(size)
	buf := getLarge(min(full, firstRead))
	for len(buf) < size {
		if len(buf) == cap(buf) {
			// Full: a buffer four times what has arrived (at most
			// the message's), never the size the header claims
			// before the bytes come.
			next := getLarge(min(full, 4*cap(buf)))
			next = append(next, buf...)
			putLarge(buf)
			buf = next
		}
		n := min(size, cap(buf)) - len(buf)
		m, err := io.ReadFull(f.br, buf[len(buf):len(buf)+n])
		buf = buf[:len(buf)+m]
		if err != nil {
			putLarge(buf)
			if f.timedOut.Load() {
				return nil, fmt.Errorf("decode: message of %d bytes not complete within %v (%d bytes arrived): connection closed", size, bound, len(buf))
			}
			timer.Stop()
			return nil, fmt.Errorf("decode: read segments: %w", err)
		}
	}
	if !timer.Stop() {
		// The bound passed as the last bytes came: the connection is
		// being closed under us.
		putLarge(buf)
		return nil, fmt.Errorf("decode: message of %d bytes not complete within %v: connection closed", size, bound)
	}
	msg, err := capnp.Unmarshal(buf[:size:size])
	if err != nil {
		putLarge(buf)
		return nil, err
	}
	msg.Arena = &pooledArena{Arena: msg.Arena, buf: buf}
	return msg, nil
}

// Large inbound messages are read into buffers pooled by capacity: powers
// of two from firstRead up to maxPooledLarge. A stream's batches (about 64
// KiB to 1 MiB each) would otherwise cost a new, zeroed buffer or two per
// message, and the garbage collector's work to reclaim them: 17% of the
// importing sidecar's CPU on a stream of 1 KiB messages (pprof, 06:22).
// Larger messages get buffers of their own.
const maxPooledLarge = 1 << 20

// largeClasses is how many capacities are pooled: firstRead<<(largeClasses-1)
// is maxPooledLarge.
const largeClasses = 5

// largeBuffers[i] holds *[]byte of capacity firstRead<<i.
var largeBuffers [largeClasses]sync.Pool

// largeClass returns the capacity of the buffer a message of n bytes is
// read into: the least power of two times firstRead that holds it, or n
// itself over maxPooledLarge.
func largeClass(n int) int {
	if n > maxPooledLarge {
		return n
	}
	c := firstRead
	for c < n {
		c <<= 1
	}
	return c
}

// getLarge returns an empty buffer of capacity c, from the pool when c is
// one of its classes. Its bytes are not zeroed: a read fills them, and a
// message is made from the bytes read only.
func getLarge(c int) []byte {
	if i, ok := largeIndex(c); ok {
		if p, _ := largeBuffers[i].Get().(*[]byte); p != nil {
			return (*p)[:0]
		}
	}
	return make([]byte, 0, c)
}

// putLarge gives b back to the pool if its capacity is one of its classes.
func putLarge(b []byte) {
	if i, ok := largeIndex(cap(b)); ok {
		b = b[:0]
		largeBuffers[i].Put(&b)
	}
}

// largeIndex returns the pool class of capacity c.
func largeIndex(c int) (int, bool) {
	if c < firstRead || c > maxPooledLarge || c&(c-1) != 0 {
		return 0, false
	}
	return bits.Len(uint(c/firstRead)) - 1, true
}

// pooledArena is a large message's arena: releasing the message gives its
// buffer back to largeBuffers. Whoever releases a message must not use its
// data afterwards (as with go-capnp's own pooled messages).
type pooledArena struct {
	capnp.Arena
	buf []byte
}

func (a *pooledArena) Release() {
	a.Arena.Release()
	putLarge(a.buf)
	a.buf = nil
}
