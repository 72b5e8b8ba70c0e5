package vat

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/vatcar/vatcar/vat/engine"
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

// TestOversizeSkipped sends a Call and a Return over the codec's limit,
// each followed by a small message: Decode reports each oversize one as an
// engine.MessageTooLarge with its kind and id, having read past it without
// buffering it, and the small messages after it come through whole. A
// message whose kind cannot be read is reported unknown.
func TestOversizeSkipped(t *testing.T) {
	a, b := tcpPair(t)
	const limit = 64 << 10
	c := newCodec(b, limit)
	defer c.Close()
	big := func(kind rpccp.Message_Which, id uint32, n int) *capnp.Message {
		msg, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
		if err != nil {
			t.Fatal(err)
		}
		m, _ := rpccp.NewRootMessage(seg)
		var p rpccp.Payload
		switch kind {
		case rpccp.Message_Which_call:
			call, _ := m.NewCall()
			call.SetQuestionId(id)
			p, _ = call.NewParams()
		case rpccp.Message_Which_return:
			ret, _ := m.NewReturn()
			ret.SetAnswerId(id)
			ret.SetReleaseParamCaps(false)
			p, _ = ret.NewResults()
		}
		d, err := capnp.NewData(seg, make([]byte, n))
		if err != nil {
			t.Fatal(err)
		}
		if err := p.SetContent(d.ToPtr()); err != nil {
			t.Fatal(err)
		}
		return msg
	}
	const size = 8 << 20
	seq := []*capnp.Message{
		big(rpccp.Message_Which_call, 7, size),
		rpcMessage(t, rpccp.Message_Which_finish, 1),
		big(rpccp.Message_Which_return, 9, size),
		rpcMessage(t, rpccp.Message_Which_finish, 2),
		testMessage(1, size), // a bare Data root: no Message to read
		rpcMessage(t, rpccp.Message_Which_finish, 3),
	}
	sent := make(chan error, 1)
	go func() {
		enc := capnp.NewEncoder(a)
		for _, m := range seq {
			if err := enc.Encode(m); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	want := []struct {
		known bool
		which rpccp.Message_Which
		id    uint32
	}{{true, rpccp.Message_Which_call, 7}, {true, rpccp.Message_Which_return, 9}, {false, 0, 0}}
	for i, w := range want {
		_, err := c.Decode()
		var tl *engine.MessageTooLarge
		if !errors.As(err, &tl) {
			t.Fatalf("oversize message %d: %v, want a MessageTooLarge", i, err)
		}
		if tl.Known != w.known || tl.Known && (tl.Which != w.which || tl.ID != w.id) || tl.Limit != limit || tl.Size < size {
			t.Errorf("oversize message %d: %+v, want known=%v %v id %d, limit %d", i, *tl, w.known, w.which, w.id, limit)
		}
		if w.which == rpccp.Message_Which_return && tl.ReleaseParamCaps {
			t.Error("Return's releaseParamCaps read as true, sent false")
		}
		m, err := c.Decode()
		if err != nil {
			t.Fatalf("message after oversize %d: %v", i, err)
		}
		root, err := rpccp.ReadRootMessage(m)
		if err != nil || root.Which() != rpccp.Message_Which_finish {
			t.Fatalf("message after oversize %d: %v %v, want a Finish", i, root.Which(), err)
		}
		if f, _ := root.Finish(); f.QuestionId() != uint32(i+1) {
			t.Errorf("Finish %d after oversize %d, want %d", f.QuestionId(), i, i+1)
		}
		m.Release()
	}
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 4<<20 {
		t.Errorf("skipping three messages of %d MiB allocated %d MiB", size>>20, grew>>20)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
}

// FuzzFrames feeds arbitrary bytes to the codec's reader with a 1 KiB
// limit: it must not panic, must end (every message consumes bytes), and
// every oversize message it reports must be over the limit.
func FuzzFrames(f *testing.F) {
	var buf bytes.Buffer
	enc := capnp.NewEncoder(&buf)
	_ = enc.Encode(rpcMessage(f, rpccp.Message_Which_call, 3))
	_ = enc.Encode(testMessage(1, 2<<10))
	_ = enc.Encode(rpcMessage(f, rpccp.Message_Which_finish, 3))
	f.Add(buf.Bytes())
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0x10, 0}) // claims 8 MiB, sends nothing
	f.Fuzz(func(t *testing.T, data []byte) {
		const limit = 1 << 10
		br := bufio.NewReader(bytes.NewReader(data))
		dec := capnp.NewDecoder(br)
		dec.MaxMessageSize = limit
		fr := &frameReader{br: br, dec: dec, max: limit, closeConn: func() error { return nil }}
		for range len(data) + 1 {
			m, err := fr.decode()
			var tl *engine.MessageTooLarge
			if errors.As(err, &tl) {
				if tl.Size <= limit {
					t.Fatalf("reported too large: %+v", *tl)
				}
				continue
			}
			if err != nil {
				return
			}
			m.Release()
		}
		t.Fatal("decode did not end")
	})
}

// TestOversizeTrickleClosed: a header claiming more than the limit, then a
// trickle. The codec discards what comes, holds none of it, and closes the
// connection once the message is overdue, as for a large message.
func TestOversizeTrickleClosed(t *testing.T) {
	defer func(g time.Duration, r int) { largeMessageGrace, minMessageRate = g, r }(largeMessageGrace, minMessageRate)
	largeMessageGrace, minMessageRate = 300*time.Millisecond, 1<<40

	a, b := tcpPair(t)
	c := newCodec(b, 1<<20)
	defer c.Close()
	hdr := make([]byte, 8)
	binary.LittleEndian.PutUint32(hdr[4:], (60<<20)/8)
	if _, err := a.Write(append(hdr, make([]byte, 4096)...)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := c.Decode()
	var tl *engine.MessageTooLarge
	if errors.As(err, &tl) || err == nil || !strings.Contains(err.Error(), "not complete within") {
		t.Fatalf("Decode of a trickling oversize message: %v, want an error saying it was not complete in time", err)
	}
	if took := time.Since(start); took < largeMessageGrace {
		t.Errorf("given up after %v, before its %v bound", took, largeMessageGrace)
	}
	a.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := readToEOF(a); err != nil {
		t.Errorf("the connection is still open after the overdue message: %v", err)
	}
}

// readToEOF reads c until it ends; an error other than the end is
// returned.
func readToEOF(c net.Conn) error {
	buf := make([]byte, 4096)
	for {
		if _, err := c.Read(buf); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
				return nil
			}
			return err
		}
	}
}

// FuzzFramesDecoderClaims: whatever the stream, go-capnp's Decoder (which
// allocates a header's claim at once) never sees a message claiming more
// than largeMessage: the frame reader reads those itself as they arrive.
// The Decoder's own limit is set just above largeMessage, so a larger
// claim reaching it would fail with its "too large" error.
func FuzzFramesDecoderClaims(f *testing.F) {
	var buf bytes.Buffer
	enc := capnp.NewEncoder(&buf)
	_ = enc.Encode(rpcMessage(f, rpccp.Message_Which_call, 3))
	_ = enc.Encode(testMessage(1, 2<<10))
	f.Add(buf.Bytes())
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0x10, 0}) // claims 8 MiB, sends nothing
	hdr := make([]byte, 4*(513+1))           // 513 segments, the first claiming 60 MiB
	binary.LittleEndian.PutUint32(hdr, 512)
	binary.LittleEndian.PutUint32(hdr[4:], (60<<20)/8)
	f.Add(hdr)
	f.Fuzz(func(t *testing.T, data []byte) {
		br := bufio.NewReader(bytes.NewReader(data))
		dec := capnp.NewDecoder(br)
		dec.MaxMessageSize = uint64(largeMessage) + 4*(maxStreamSegments+2)
		fr := &frameReader{br: br, dec: dec, max: 64 << 20, closeConn: func() error { return nil }}
		for range len(data) + 1 {
			m, err := fr.decode()
			if err != nil {
				if strings.Contains(err.Error(), "too large") {
					t.Fatalf("a claim over %d bytes reached the Decoder: %v", largeMessage, err)
				}
				return
			}
			m.Release()
		}
		t.Fatal("decode did not end")
	})
}

// TestLargeBufferClasses checks the pool's classes: powers of two from
// firstRead to maxPooledLarge, and nothing else pooled.
func TestLargeBufferClasses(t *testing.T) {
	if firstRead<<(largeClasses-1) != maxPooledLarge {
		t.Fatalf("largeClasses %d does not reach maxPooledLarge %d from %d", largeClasses, maxPooledLarge, firstRead)
	}
	for _, c := range []struct{ n, class int }{
		{1, firstRead}, {firstRead, firstRead}, {firstRead + 1, 2 * firstRead},
		{maxPooledLarge, maxPooledLarge}, {maxPooledLarge + 1, maxPooledLarge + 1},
	} {
		if got := largeClass(c.n); got != c.class {
			t.Errorf("largeClass(%d) = %d, want %d", c.n, got, c.class)
		}
	}
	for i := range largeClasses {
		if got, ok := largeIndex(firstRead << i); !ok || got != i {
			t.Errorf("largeIndex(%d) = %d, %v; want %d", firstRead<<i, got, ok, i)
		}
	}
	for _, c := range []int{firstRead - 1, firstRead + 8, 3 * firstRead, 2 * maxPooledLarge} {
		if _, ok := largeIndex(c); ok {
			t.Errorf("largeIndex(%d) pools a capacity that is no class", c)
		}
	}
	b := getLarge(2 * firstRead)
	if len(b) != 0 || cap(b) != 2*firstRead {
		t.Fatalf("getLarge: len %d cap %d", len(b), cap(b))
	}
}

// TestPooledLargeMessagesKeepTheirBytes decodes large messages of sizes
// that share pool classes, holding some while later ones arrive and
// releasing others before: a released message's buffer is reused by a
// later one, and a held message's bytes never change.
func TestPooledLargeMessagesKeepTheirBytes(t *testing.T) {
	a, b := tcpPair(t)
	c := newCodec(b, DefaultMaxMessageSize)
	defer c.Close()
	sizes := []int{largeMessage + 1, 100 << 10, 300 << 10, 200 << 10, 900 << 10, 150 << 10, 2 << 20, 70 << 10}
	sent := make(chan error, 1)
	go func() {
		enc := capnp.NewEncoder(a)
		for i, n := range sizes {
			if err := enc.Encode(testMessage(10+i, n)); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	check := func(m *capnp.Message, i int) {
		t.Helper()
		p, err := m.Root()
		if err != nil {
			t.Fatalf("message %d: root: %v", i, err)
		}
		if got := p.Data(); !bytes.Equal(got, bytes.Repeat([]byte{byte(10 + i)}, sizes[i])) {
			t.Fatalf("message %d: %d bytes, not %d bytes of %d", i, len(got), sizes[i], 10+i)
		}
	}
	var held []*capnp.Message
	for i := range sizes {
		m, err := c.Decode()
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		check(m, i)
		if i%2 == 0 {
			held = append(held, m) // kept while the next ones arrive
		} else {
			m.Release() // its buffer goes back for the next
		}
		for j, h := range held {
			check(h, 2*j)
		}
	}
	for _, h := range held {
		h.Release()
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
}
