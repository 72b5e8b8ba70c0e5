package vat

import (
	"bytes"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

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

// readData reads n messages from b, each a Data root given to check with its
// index, then, if eof, one more read that must end the stream; the channel
// gets the first error (io.EOF when the stream ended as it should).
func readData(b net.Conn, n int, check func(i int, d []byte) error, eof bool) <-chan error {
	read := make(chan error, 1)
	go func() {
		dec := capnp.NewDecoder(b)
		dec.MaxMessageSize = DefaultMaxMessageSize
		for i := range n {
			m, err := dec.Decode()
			if err != nil {
				read <- err
				return
			}
			p, err := m.Root()
			if err == nil {
				err = check(i, p.Data())
			}
			if err != nil {
				read <- err
				return
			}
		}
		if !eof {
			read <- nil
			return
		}
		_, err := b.Read(make([]byte, 1))
		read <- err
	}()
	return read
}

// TestCodecFlushesEverything encodes small and large messages (both of the
// codec's paths) and closes at once: the peer reads every message, in order,
// and then the end of the stream. Encode after Close fails.
func TestCodecFlushesEverything(t *testing.T) {
	a, b := tcpPair(t)
	c := newCodec(a, DefaultMaxMessageSize)
	sizes := []int{0, 100, 5000, directSize + 1, 3 * maxPending / 2, 100, 1}
	const rounds = 50
	read := readData(b, rounds*len(sizes), func(i int, got []byte) error {
		if want := bytes.Repeat([]byte{byte(i)}, sizes[i%len(sizes)]); !bytes.Equal(got, want) {
			return errors.New("message out of order or corrupted")
		}
		return nil
	}, true)
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

// TestCodecBatchesRunnableEncodes encodes from many goroutines made runnable
// at once, on one P: the writer, woken by the first Encode, yields to them
// before it writes, so their messages share a few writes instead of taking
// one each (64 writes for 64 messages without the yield). It shows the
// mechanism, not a sidecar's traffic. Under the race detector, which
// shuffles the scheduler's run queue, it passes without the yield too: the
// build without -race is the one that guards it. Every message still
// reaches the peer, in a valid stream.
func TestCodecBatchesRunnableEncodes(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	a, b := tcpPair(t)
	raw := &countingConn{Conn: a}
	c := newCodec(raw, DefaultMaxMessageSize)
	defer c.Close()
	if !c.yield {
		t.Fatal("codec made at GOMAXPROCS 1 does not yield")
	}
	const n = 64
	seen := make(map[byte]bool)
	read := readData(b, n, func(_ int, got []byte) error {
		if seen[got[0]] {
			return errors.New("a message came twice")
		}
		seen[got[0]] = true
		return nil
	}, false)
	// The encoders wake nobody when done (a WaitGroup wakes its waiter
	// only at the last Done), so nothing but the writer's own yield puts
	// the writer behind them.
	start := make(chan struct{})
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			errs[i] = c.Encode(testMessage(i, 100))
		})
	}
	close(start)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("encode: %v", err)
	}
	select {
	case err := <-read:
		if err != nil {
			t.Fatalf("peer read: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the peer did not get every message in a minute")
	}
	if w := raw.writes.Load(); w > n/4 {
		t.Errorf("%d messages took %d writes, want them batched (at most %d)", n, w, n/4)
	}
}
