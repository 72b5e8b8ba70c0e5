package vat

import (
	"bytes"
	"encoding/binary"
	"runtime"
	"strings"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
)

// TestLargeMessagesDecode sends messages around and far above largeMessage,
// in one segment and in several, through the codec's reader: each comes back
// whole.
func TestLargeMessagesDecode(t *testing.T) {
	a, b := tcpPair(t)
	c := newCodec(b, DefaultMaxMessageSize)
	defer c.Close()
	multi := func(parts, n int) *capnp.Message {
		m, seg := capnp.NewMultiSegmentMessage(nil)
		var d capnp.UInt8List
		for i := range parts {
			var err error
			if d, err = capnp.NewData(seg, bytes.Repeat([]byte{byte(i)}, n)); err != nil {
				t.Fatal(err)
			}
		}
		if err := m.SetRoot(d.ToPtr()); err != nil {
			t.Fatal(err)
		}
		return m
	}
	cases := []struct {
		name string
		msg  *capnp.Message
		want []byte
	}{
		{"just small", testMessage(1, largeMessage-100), bytes.Repeat([]byte{1}, largeMessage-100)},
		{"just large", testMessage(2, largeMessage+1), bytes.Repeat([]byte{2}, largeMessage+1)},
		{"5 MiB", testMessage(3, 5<<20), bytes.Repeat([]byte{3}, 5<<20)},
		{"segments", multi(4, 700<<10), bytes.Repeat([]byte{3}, 700<<10)},
	}
	sent := make(chan error, 1)
	go func() {
		enc := capnp.NewEncoder(a)
		for _, tc := range cases {
			if err := enc.Encode(tc.msg); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	for _, tc := range cases {
		m, err := c.Decode()
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		p, err := m.Root()
		if err != nil {
			t.Fatalf("%s: root: %v", tc.name, err)
		}
		if got := p.Data(); !bytes.Equal(got, tc.want) {
			t.Errorf("%s: %d bytes back, want %d equal ones", tc.name, len(got), len(tc.want))
		}
		if tc.name == "segments" && m.NumSegments() < 2 {
			t.Errorf("segments: %d segment(s), want several", m.NumSegments())
		}
		m.Release()
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
}

// TestClaimedSizeNotAllocated is issue 14's trickle: a header claims 60 MiB
// and a few bytes follow. The reader allocates about what arrived, not the
// claim, and closes the connection once the message is overdue.
func TestClaimedSizeNotAllocated(t *testing.T) {
	defer func(g time.Duration, r int) { largeMessageGrace, minMessageRate = g, r }(largeMessageGrace, minMessageRate)
	largeMessageGrace, minMessageRate = 300*time.Millisecond, 1<<40

	a, b := tcpPair(t)
	c := newCodec(b, DefaultMaxMessageSize)
	defer c.Close()
	const claim = 60 << 20
	hdr := make([]byte, 8)
	binary.LittleEndian.PutUint32(hdr, 0) // one segment
	binary.LittleEndian.PutUint32(hdr[4:], claim/8)
	if _, err := a.Write(append(hdr, make([]byte, 100)...)); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	_, err := c.Decode()
	runtime.ReadMemStats(&after)
	if err == nil || !strings.Contains(err.Error(), "not complete within") {
		t.Fatalf("Decode of a trickling 60 MiB message: %v, want an error saying it was not complete in time", err)
	}
	if took := time.Since(start); took < largeMessageGrace {
		t.Errorf("the message was given up after %v, before its %v bound", took, largeMessageGrace)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 16<<20 {
		t.Errorf("decoding allocated %d MiB for %d bytes that arrived; want about what arrived, not the %d MiB claimed", grew>>20, 108, claim>>20)
	}
	// The connection is closed: the peer sees the end.
	a.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := a.Read(make([]byte, 1)); err == nil {
		t.Error("the connection is still open after the overdue message")
	}
}
