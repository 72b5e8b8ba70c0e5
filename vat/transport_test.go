package vat

import (
	"bytes"
	"errors"
	"io"
	"net"
	"runtime"
	"testing"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/vatcar/vatcar/internal/testnet"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t testing.TB) (a, b net.Conn) { return testnet.Pair(t, "tcp") }

// testMessage returns a message whose root is a Data of n bytes, each i's
// low byte. Building it in memory cannot fail.
func testMessage(i, n int) *capnp.Message {
	m, seg := capnp.NewMultiSegmentMessage(nil)
	d, err := capnp.NewData(seg, bytes.Repeat([]byte{byte(i)}, n))
	if err == nil {
		err = m.SetRoot(d.ToPtr())
	}
	if err != nil {
		panic(err)
	}
	return m
}

// TestCodecFlushesEverything encodes small and large messages (both of the
// codec's paths) and closes at once: the peer reads every message, in order,
// and then the end of the stream. Encode after Close fails.
func TestCodecFlushesEverything(t *testing.T) {
	a, b := tcpPair(t)
	c := newCodec(a, DefaultMaxMessageSize)
	sizes := []int{0, 100, 5000, directSize + 1, 3 * maxPending / 2, 100, 1}
	const rounds = 50
	read := make(chan error, 1)
	go func() {
		dec := capnp.NewDecoder(b)
		dec.MaxMessageSize = DefaultMaxMessageSize
		for i := range rounds * len(sizes) {
			m, err := dec.Decode()
			if err != nil {
				read <- err
				return
			}
			p, err := m.Root()
			if err != nil {
				read <- err
				return
			}
			want := bytes.Repeat([]byte{byte(i)}, sizes[i%len(sizes)])
			if got := p.Data(); !bytes.Equal(got, want) {
				read <- errors.New("message out of order or corrupted")
				return
			}
		}
		_, err := b.Read(make([]byte, 1))
		read <- err
	}()
	for i := range rounds * len(sizes) {
		if err := c.Encode(testMessage(i, sizes[i%len(sizes)])); err != nil {
			t.Fatalf("encode %d: %v", i, err)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := <-read; err != io.EOF {
		t.Fatalf("peer read: %v, want every message then EOF", err)
	}
	if err := c.Encode(testMessage(0, 1)); !errors.Is(err, errTransportClosed) {
		t.Fatalf("encode after close: %v, want %v", err, errTransportClosed)
	}
}

// TestCodecCloseUnblocks closes a codec whose peer reads nothing: Close
// returns (after its flush timeout at most), and so does an Encode blocked
// on the full pending buffer.
func TestCodecCloseUnblocks(t *testing.T) {
	a, _ := tcpPair(t)
	c := newCodec(a, DefaultMaxMessageSize)
	encoded := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			if err := c.Encode(testMessage(i, 4000)); err != nil {
				encoded <- err
				return
			}
		}
	}()
	// Wait until the writer is blocked and Encode waits for space.
	for {
		c.mu.Lock()
		full := len(c.pending) >= maxPending
		c.mu.Unlock()
		if full {
			break
		}
		select {
		case err := <-encoded:
			t.Fatalf("encode failed before close: %v", err)
		default:
			runtime.Gosched()
		}
	}
	_ = c.Close()
	if err := <-encoded; err == nil {
		t.Fatal("encode after close succeeded")
	}
}
