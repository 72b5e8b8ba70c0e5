package bridge

import (
	"math/bits"
	"sync"

	"google.golang.org/grpc/mem"
)

// BufferPool returns the buffer pool the bridge copies messages into, for
// the gRPC servers and connections that carry bridged calls too
// (experimental.BufferPool, experimental.WithBufferPool; IngressConfig's
// server options include it). Unlike mem.DefaultBufferPool it hands out
// buffers without zeroing them: every user fills the length it asked for
// before anyone reads it (mem.Copy copies that many bytes; gRPC's
// transport reads a whole frame into it), so the zeroing only cost time,
// up to the whole capacity of the size class per message (a 1 KiB message
// took a 4 KiB buffer and cleared all of it: 3.5% of an exporting
// sidecar's CPU on a stream of 1 KiB messages).
func BufferPool() mem.BufferPool { return &bufferPool }

// bufferPool is the pool BufferPool returns.
var bufferPool dirtyPool

// dirtyClasses are the pool's capacities as powers of two (256 B to
// 1 MiB, gRPC's default pool's sizes); larger buffers are not pooled.
var dirtyClasses = [...]uint8{8, 12, 14, 15, 20}

// dirtyPool is a mem.BufferPool of sized classes, one sync.Pool each, that
// does not zero what it hands out. It is safe for concurrent use.
type dirtyPool struct {
	pools [len(dirtyClasses)]sync.Pool // of *[]byte with cap 1<<dirtyClasses[i]
}

// dirtyClass returns the index of the smallest class that holds size bytes, or
// -1 when none does.
func dirtyClass(size int) int {
	if size <= 0 {
		return 0
	}
	need := bits.Len(uint(size - 1)) // smallest power of two >= size
	for i, c := range dirtyClasses {
		if int(c) >= need {
			return i
		}
	}
	return -1
}

// Get implements mem.BufferPool: a buffer of length size whose contents
// are whatever it held before.
func (p *dirtyPool) Get(size int) *[]byte {
	i := dirtyClass(size)
	if i < 0 {
		b := make([]byte, size)
		return &b
	}
	if b, ok := p.pools[i].Get().(*[]byte); ok {
		*b = (*b)[:size]
		return b
	}
	b := make([]byte, size, 1<<dirtyClasses[i])
	return &b
}

// Put implements mem.BufferPool. A buffer whose capacity is not one of
// the classes (not from Get) is left to the garbage collector.
func (p *dirtyPool) Put(b *[]byte) {
	c := cap(*b)
	if c == 0 || c&(c-1) != 0 {
		return
	}
	i := dirtyClass(c)
	if i < 0 || 1<<dirtyClasses[i] != c {
		return
	}
	*b = (*b)[:0]
	p.pools[i].Put(b)
}
