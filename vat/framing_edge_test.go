package vat

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vatcar/vatcar/vat/engine"
)

// Test513SegmentsClaimNotAllocated: go-capnp accepts a segment table
// with maxSeg == 512 (513 segments); peekSize once refused it (maxSeg >=
// 512) and handed the message to go-capnp's Decoder, which allocates the
// claimed size at once and has no time bound: issue 14's trickle again.
func Test513SegmentsClaimNotAllocated(t *testing.T) {
	hdr := make([]byte, 4*(513+1)) // 513 sizes + count: 2056 bytes, a whole number of words
	binary.LittleEndian.PutUint32(hdr, 512)
	binary.LittleEndian.PutUint32(hdr[4:], (60<<20)/8) // segment 0; the other 512 empty
	grew, err := decodeTrickled(t, hdr)
	if err == nil || !strings.Contains(err.Error(), "not complete within") {
		t.Errorf("Decode: %v, want the large-message bound", err)
	}
	if grew > 16<<20 {
		t.Errorf("allocated %d MiB for %d bytes that arrived", grew>>20, len(hdr)+100)
	}
}

// decodeTrickled sends hdr and 100 bytes of a message, then nothing, to a
// codec whose bound on a large message is 300 ms, and returns the bytes
// allocated meanwhile and how its Decode ended.
func decodeTrickled(t *testing.T, hdr []byte) (uint64, error) {
	t.Helper()
	defer func(g time.Duration, r int) { largeMessageGrace, minMessageRate = g, r }(largeMessageGrace, minMessageRate)
	largeMessageGrace, minMessageRate = 300*time.Millisecond, 1<<40
	a, b := tcpPair(t)
	c := newCodec(b, DefaultMaxMessageSize)
	defer c.Close()
	if _, err := a.Write(append(hdr, make([]byte, 100)...)); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	done := make(chan error, 1)
	go func() { _, err := c.Decode(); done <- err }()
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		runtime.ReadMemStats(&after)
		t.Fatalf("Decode of a trickled %d-byte header still blocked after 30 s (bound %v); %d KiB allocated",
			len(hdr), largeMessageGrace, (after.TotalAlloc-before.TotalAlloc)>>10)
	}
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc, err
}

// Test513SegmentsOversizeFailsOneCall: the same framing over the limit is
// skipped as an oversize message (one call fails), where go-capnp's
// Decoder refused it and the connection died.
func Test513SegmentsOversizeFailsOneCall(t *testing.T) {
	a, b := tcpPair(t)
	const limit = 64 << 10
	c := newCodec(b, limit)
	defer c.Close()
	hdr := make([]byte, 4*(513+1))
	binary.LittleEndian.PutUint32(hdr, 512)
	binary.LittleEndian.PutUint32(hdr[4:], (1<<20)/8)
	go a.Write(append(hdr, make([]byte, 1<<20)...))
	_, err := c.Decode()
	var tl *engine.MessageTooLarge
	if !errors.As(err, &tl) {
		t.Fatalf("Decode: %v, want a MessageTooLarge", err)
	}
}

// TestSlowReaderNotCut: a peer that reads all the time, slower than 256
// KiB per WriteStallTimeout but faster than stallChunk per it, keeps its
// connection (with 256 KiB chunks it was closed as "not reading").
func TestSlowReaderNotCut(t *testing.T) {
	a, b := tcpPair(t)
	_ = a.(*net.TCPConn).SetWriteBuffer(16 << 10)
	_ = b.(*net.TCPConn).SetReadBuffer(16 << 10)
	// A second: a 16 KiB chunk needs four of the reader's 20 ms reads, so
	// the margin holds on a loaded machine (500 ms failed once at load 5).
	const timeout = time.Second
	stalled := make(chan struct{})
	w := newStallConn(a, timeout, func() { close(stalled) })
	stop := make(chan struct{})
	var read atomic.Int64
	go func() { // 4 KiB every 20 ms: about 200 KiB/s, 200 KiB per timeout
		buf := make([]byte, 4<<10)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			n, err := io.ReadFull(b, buf)
			read.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	defer close(stop)
	start := time.Now()
	_, err := w.Write(make([]byte, 448<<10)) // over two timeouts' worth
	if err != nil {
		t.Fatalf("write to a reader taking ~200 KiB/s failed after %v with %d bytes read: %v",
			time.Since(start).Round(time.Millisecond), read.Load(), err)
	}
}

// TestSmallClaimNotHeld: a header claiming just under 1 MiB (which once
// took go-capnp's Decoder: the claim allocated at once, the bytes awaited
// with no bound) with 100 bytes sent is read as it arrives and dropped at
// its bound; only messages of at most firstRead take the Decoder.
func TestSmallClaimNotHeld(t *testing.T) {
	const claim = 1<<20 - 8
	hdr := make([]byte, 8)
	binary.LittleEndian.PutUint32(hdr[4:], uint32(claim/8))
	grew, err := decodeTrickled(t, hdr)
	if err == nil || !strings.Contains(err.Error(), "not complete within") {
		t.Errorf("Decode: %v, want the bound's error", err)
	}
	if grew > 256<<10 {
		t.Errorf("allocated %d KiB for 108 bytes that arrived", grew>>10)
	}
}
