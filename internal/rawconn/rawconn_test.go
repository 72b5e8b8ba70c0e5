//go:build linux

package rawconn

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pair returns a connected pair of sockets on loopback, network "tcp" or
// "unix", the accepted end wrapped by Listener and the dialled end by Wrap.
func pair(t *testing.T, network string) (accepted, dialled net.Conn) {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(t.TempDir(), "s")
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan net.Conn, 1)
	go func() {
		c, err := Listener{Listener: ln}.Accept()
		if err != nil {
			t.Error(err)
		}
		got <- c
	}()
	d, err := net.Dial(network, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	dialled = Wrap(d)
	accepted = <-got
	if accepted == nil {
		t.FailNow()
	}
	t.Cleanup(func() {
		accepted.Close()
		dialled.Close()
	})
	return accepted, dialled
}

func wrapped(t *testing.T, c net.Conn) {
	t.Helper()
	if _, ok := c.(*Conn); !ok {
		t.Fatalf("%T not wrapped", c)
	}
}

// TestCopy sends 8 MiB each way at once, in writes of assorted sizes up to
// 1 MiB (more than a socket buffer: raw writes that fill it wait for the
// poller), and reads it back intact on both ends; then a half-close reads
// as EOF.
func TestCopy(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			a, b := pair(t, network)
			wrapped(t, a)
			wrapped(t, b)
			data := make([]byte, 8<<20)
			if _, err := rand.Read(data); err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			for _, c := range []net.Conn{a, b} {
				wg.Add(2)
				go func() {
					defer wg.Done()
					for off, n := 0, 1; off < len(data); off, n = off+n, n*3%(1<<20)+1 {
						n = min(n, len(data)-off)
						if w, err := c.Write(data[off : off+n]); err != nil || w != n {
							t.Errorf("write %d bytes at %d: wrote %d, %v", n, off, w, err)
							return
						}
					}
				}()
				go func() {
					defer wg.Done()
					got, err := io.ReadAll(io.LimitReader(c, int64(len(data))))
					if err != nil || !bytes.Equal(got, data) {
						t.Errorf("read %d of %d bytes, equal %v, err %v", len(got), len(data), bytes.Equal(got, data), err)
					}
				}()
			}
			wg.Wait()
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			if n, err := a.Read(make([]byte, 10)); n != 0 || err != io.EOF {
				t.Errorf("read after the peer closed: %d, %v; want 0, EOF", n, err)
			}
		})
	}
}

// TestConcurrentWrites writes whole records from several goroutines at
// once: each Write is written whole, never interleaved with another.
func TestConcurrentWrites(t *testing.T) {
	a, b := pair(t, "tcp")
	const writers, records, size = 8, 50, 64 << 10
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec := bytes.Repeat([]byte{byte('a' + w)}, size)
			for range records {
				if _, err := b.Write(rec); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	buf := make([]byte, size)
	for i := range writers * records {
		if _, err := io.ReadFull(a, buf); err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		if n := bytes.Count(buf, buf[:1]); n != size {
			t.Fatalf("record %d mixes writers: %d of %d bytes are %q", i, n, size, buf[0])
		}
	}
	wg.Wait()
}

// TestDeadlines: a read past its deadline fails with a timeout, a write
// that cannot finish before its deadline too, and the connection still
// works once the deadline is lifted.
func TestDeadlines(t *testing.T) {
	a, b := pair(t, "tcp")
	if err := a.SetReadDeadline(time.Now().Add(20 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	_, err := a.Read(make([]byte, 10))
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past the deadline: %v; want a timeout", err)
	}
	// Nobody reads a: b's writes fill both socket buffers and then wait.
	if err := b.SetWriteDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 64<<20)
	n, err := b.Write(big)
	if !errors.Is(err, os.ErrDeadlineExceeded) || n == 0 || n >= len(big) {
		t.Fatalf("write past the deadline: wrote %d of %d bytes, %v; want part of it and a timeout", n, len(big), err)
	}
	for _, c := range []net.Conn{a, b} {
		if err := c.SetDeadline(time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	// What was written arrives, and the connection carries on.
	done := make(chan error, 1)
	go func() {
		_, err := io.CopyN(io.Discard, a, int64(n)+5)
		done <- err
	}()
	if _, err := b.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("read the rest: %v", err)
	}
}

// TestCloseUnblocksRead closes a connection while a Read waits on it: the
// Read returns net.ErrClosed.
func TestCloseUnblocksRead(t *testing.T) {
	a, _ := pair(t, "tcp")
	got := make(chan error, 1)
	go func() {
		_, err := a.Read(make([]byte, 10))
		got <- err
	}()
	// The Read waits in the poller; poll until it is there.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for !readerWaiting(a) && ctx.Err() == nil {
		runtime.Gosched()
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read on a closed connection: %v; want net.ErrClosed", err)
		}
	case <-ctx.Done():
		t.Fatal("read still blocked 10s after Close")
	}
}

// readerWaiting reports whether a Read holds c's read lock (it is in, or
// about to wait in, the poller).
func readerWaiting(c net.Conn) bool {
	rc, ok := c.(*Conn)
	if !ok {
		return true
	}
	if rc.rmu.TryLock() {
		rc.rmu.Unlock()
		return false
	}
	return true
}

// TestWriteToClosedPeer: writing to a peer that closed its socket fails
// with an error rather than hanging or reporting success forever.
func TestWriteToClosedPeer(t *testing.T) {
	a, b := pair(t, "tcp")
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		if _, err := b.Write(buf); err != nil {
			var oe *net.OpError
			if !errors.As(err, &oe) || oe.Op != "write" {
				t.Errorf("write error %v (%T), want a *net.OpError for write", err, err)
			}
			return
		}
	}
	t.Fatal("writes to a closed peer still succeed after 10s")
}

// TestWrapOthers: a connection that is not a TCP or Unix socket is
// returned as it is.
func TestWrapOthers(t *testing.T) {
	p, q := net.Pipe()
	defer p.Close()
	defer q.Close()
	if got := Wrap(p); got != p {
		t.Fatalf("Wrap(net.Pipe end) = %T, want it unchanged", got)
	}
}
