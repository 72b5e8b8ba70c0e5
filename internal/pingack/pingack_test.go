package pingack

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/vatcar/vatcar/internal/testnet"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// writeCounter counts the writes made to a net.Conn.
type writeCounter struct {
	net.Conn
	writes atomic.Int64
	fail   atomic.Bool  // writes fail with errBroken
	failed atomic.Int64 // writes that failed so
}

var errBroken = errors.New("broken connection")

func (w *writeCounter) Write(b []byte) (int, error) {
	w.writes.Add(1)
	if w.fail.Load() {
		w.failed.Add(1)
		return 0, errBroken
	}
	return w.Conn.Write(b)
}

// ackPair returns a Conn holding ACKs for delay over a counted
// loopback TCP connection, and the peer's end.
func ackPair(t *testing.T, delay time.Duration) (*Conn, *writeCounter, net.Conn) {
	t.Helper()
	d, peer := testnet.Pair(t, "tcp")
	wc := &writeCounter{Conn: d}
	p := New(wc, delay)
	t.Cleanup(func() { p.Close() })
	return p, wc, peer
}

// frame returns an HTTP/2 frame header of the given type and flags with n
// bytes of payload.
func frame(typ, flags byte, n int) []byte {
	b := []byte{byte(n >> 16), byte(n >> 8), byte(n), typ, flags, 0, 0, 0, 0}
	return append(b, bytes.Repeat([]byte{7}, n)...)
}

func readN(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

func mustWrite(t *testing.T, c net.Conn, b []byte) {
	t.Helper()
	if n, err := c.Write(b); n != len(b) || err != nil {
		t.Fatalf("write %d bytes: %d, %v", len(b), n, err)
	}
}

// TestPingAckRidesWithNextWrite: a PING ACK is held and leaves with the next
// write, in one write to the connection, ahead of it; another frame of the
// same size (a PING that is not an ACK) is not held.
func TestPingAckRidesWithNextWrite(t *testing.T) {
	p, wc, peer := ackPair(t, time.Hour)
	ack, data := frame(6, 1, 8), frame(0, 0, 100)
	mustWrite(t, p, ack)
	if n := wc.writes.Load(); n != 0 {
		t.Fatalf("%d writes after a lone PING ACK, want it held", n)
	}
	mustWrite(t, p, data)
	if n := wc.writes.Load(); n != 1 {
		t.Fatalf("%d writes for a PING ACK and a DATA frame, want 1", n)
	}
	if got := readN(t, peer, len(ack)+len(data)); !bytes.Equal(got, append(append([]byte{}, ack...), data...)) {
		t.Fatalf("peer read %x, want the ACK then the DATA frame", got)
	}
	ping := frame(6, 0, 8)
	mustWrite(t, p, ping)
	if n := wc.writes.Load(); n != 2 {
		t.Fatalf("%d writes after a PING that is not an ACK, want it written at once", n)
	}
	if got := readN(t, peer, len(ping)); !bytes.Equal(got, ping) {
		t.Fatalf("peer read %x, want the PING", got)
	}
}

// TestPingAckAlone: a PING ACK with no write after it waits, and leaves on
// its own when its delay passes (the timer, fired here at once); one held
// when the connection closes leaves before the close.
func TestPingAckAlone(t *testing.T) {
	p, wc, peer := ackPair(t, time.Hour)
	ack := frame(6, 1, 8)
	mustWrite(t, p, ack)
	if n := wc.writes.Load(); n != 0 {
		t.Fatalf("%d writes after a lone PING ACK, want it held", n)
	}
	p.timer.Reset(0)
	if got := readN(t, peer, len(ack)); !bytes.Equal(got, ack) {
		t.Fatalf("peer read %x, want the ACK", got)
	}
	if n := wc.writes.Load(); n != 1 {
		t.Fatalf("%d writes, want 1", n)
	}
	mustWrite(t, p, ack)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, peer, len(ack)); !bytes.Equal(got, ack) {
		t.Fatalf("peer read %x after Close, want the held ACK", got)
	}
	if _, err := p.Write(ack); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after Close: %v, want net.ErrClosed", err)
	}
}

// TestPingAckJoins: two ACKs in a row leave together; one followed by a
// write too large to join it leaves first, in a write of its own.
func TestPingAckJoins(t *testing.T) {
	p, wc, peer := ackPair(t, time.Hour)
	ack := frame(6, 1, 8)
	mustWrite(t, p, ack)
	mustWrite(t, p, ack)
	if got := readN(t, peer, 2*len(ack)); !bytes.Equal(got, append(append([]byte{}, ack...), ack...)) {
		t.Fatalf("peer read %x, want two ACKs", got)
	}
	if n := wc.writes.Load(); n != 1 {
		t.Fatalf("%d writes, want 1 (the second ACK joined the first)", n)
	}
	big := frame(0, 0, 64<<10)
	mustWrite(t, p, ack)
	wrote := make(chan error, 1)
	go func() { // the peer reads at the same time: no socket buffer must hold it all
		_, err := p.Write(big)
		wrote <- err
	}()
	if got := readN(t, peer, len(ack)+len(big)); !bytes.Equal(got[:len(ack)], ack) || !bytes.Equal(got[len(ack):], big) {
		t.Fatal("peer did not read the ACK and then the large frame")
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if n := wc.writes.Load(); n != 3 {
		t.Fatalf("%d writes, want 3", n)
	}
}

// TestPingAckFlushFailure: when the held ACK's own write (the timer's)
// fails, the next Write reports that error, even though the connection
// would now take it, rather than write behind a lost frame.
func TestPingAckFlushFailure(t *testing.T) {
	p, wc, _ := ackPair(t, time.Hour)
	wc.fail.Store(true)
	mustWrite(t, p, frame(6, 1, 8))
	p.timer.Reset(0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for wc.failed.Load() == 0 {
		if ctx.Err() != nil {
			t.Fatal("the held ACK was not written within 10s")
		}
		time.Sleep(time.Millisecond) // poll for the timer's write
	}
	wc.fail.Store(false)
	if _, err := p.Write(frame(0, 0, 10)); !errors.Is(err, errBroken) {
		t.Fatalf("write after the held ACK failed: %v, want %v", err, errBroken)
	}
	if n := wc.writes.Load(); n != 1 {
		t.Fatalf("%d writes, want only the failed one", n)
	}
}
