package rawconn

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/vatcar/vatcar/internal/testnet"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pair returns a connected pair of sockets on loopback, network "tcp" or
// "unix", both ends wrapped.
func pair(t *testing.T, network string) (accepted, dialled net.Conn) {
	t.Helper()
	d, a := testnet.Pair(t, network)
	return Wrap(a), Wrap(d)
}

// wrapped fails the test unless c is wrapped, where Wrap wraps.
func wrapped(t *testing.T, c net.Conn) {
	t.Helper()
	_, ok := c.(interface{ NetConn() net.Conn })
	if ok != Enabled {
		t.Fatalf("%T: wrapped %v, want %v (Enabled)", c, ok, Enabled)
	}
}

// TestCopy sends 8 MiB each way at once, in writes of assorted sizes up to
// 1 MiB (more than a socket buffer: raw writes that fill it wait for the
// poller), and reads it back intact on both ends; then, once the peer
// closed, a read gives EOF.
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
// that cannot finish before its deadline too (both *net.OpErrors naming the
// call), and the connection still works once the deadline is lifted.
func TestDeadlines(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) { testDeadlines(t, network) })
	}
}

func testDeadlines(t *testing.T, network string) {
	a, b := pair(t, network)
	if err := a.SetReadDeadline(time.Now().Add(20 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	_, err := a.Read(make([]byte, 10))
	var ne net.Error
	var oe *net.OpError
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() || !errors.As(err, &oe) || oe.Op != "read" {
		t.Fatalf("read past the deadline: %v; want a read OpError that is a timeout", err)
	}
	// Nobody reads a: b's writes fill both socket buffers and then wait.
	if err := b.SetWriteDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 64<<20)
	n, err := b.Write(big)
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &oe) || oe.Op != "write" || n >= len(big) {
		t.Fatalf("write past the deadline: wrote %d of %d bytes, %v; want less than all of it (none, if the deadline passed before the first write) and a write OpError for the timeout", n, len(big), err)
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

// TestCloseUnblocksRead closes a connection while a Read waits in the
// poller, and one while a Write waits for the peer (that reads nothing) to
// make room: both return net.ErrClosed, as *net.OpErrors naming the call.
func TestCloseUnblocks(t *testing.T) {
	for _, op := range []string{"read", "write"} {
		t.Run(op, func(t *testing.T) {
			a, _ := pair(t, "tcp")
			got := make(chan error, 1)
			go func() {
				var err error
				if op == "read" {
					_, err = a.Read(make([]byte, 10))
				} else {
					_, err = a.Write(make([]byte, 64<<20))
				}
				got <- err
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for !waitingInPoller("TestCloseUnblocks") {
				if ctx.Err() != nil {
					t.Fatalf("the %s never waited in the poller", op)
				}
				runtime.Gosched()
			}
			if err := a.Close(); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-got:
				var oe *net.OpError
				if !errors.Is(err, net.ErrClosed) || !errors.As(err, &oe) || oe.Op != op {
					t.Fatalf("%s on a closed connection: %v; want a %s OpError for net.ErrClosed", op, err, op)
				}
			case <-ctx.Done():
				t.Fatalf("%s still blocked 10s after Close", op)
			}
		})
	}
}

// waitingInPoller reports whether a goroutine started by the test named
// test waits in the runtime's network poller.
func waitingInPoller(test string) bool {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte("[IO wait")) && bytes.Contains(g, []byte(test+".func")) {
			return true
		}
	}
	return false
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

// TestZeroLengthRead: a zero-length Read returns at once on an open
// connection, and fails on a closed one, as on a net.Conn.
func TestZeroLengthRead(t *testing.T) {
	a, _ := pair(t, "tcp")
	if n, err := a.Read(nil); n != 0 || err != nil {
		t.Fatalf("Read(nil) = %d, %v; want 0, nil", n, err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Read(nil); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read(nil) after Close: %v; want net.ErrClosed", err)
	}
}

// TestWithoutRace runs this package's other tests again without the race
// detector when this build has it (Wrap then wraps nothing: see the package
// doc), so that `go test -race ./...` tests the raw system calls too.
func TestWithoutRace(t *testing.T) {
	if Enabled || runtime.GOOS != "linux" || os.Getenv("RAWCONN_NO_RACE_CHILD") != "" {
		t.Skip("this build makes raw system calls itself")
	}
	cmd := exec.Command("go", "test", "-count=1", "-run", "^Test[^W]", ".")
	cmd.Env = append(os.Environ(), "RAWCONN_NO_RACE_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go test without -race: %v\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("ok")) {
		t.Fatalf("go test without -race printed no ok:\n%s", out)
	}
}
