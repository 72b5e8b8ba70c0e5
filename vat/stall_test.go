package vat

import (
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"
)

// TestStallWatchdog: a write to a peer that reads nothing fails as not
// reading and closes the connection, once, after an idle spell in which
// the watchdog stopped itself; a write to a reading peer before that
// succeeds and leaves no watchdog armed.
func TestStallWatchdog(t *testing.T) {
	// Default socket buffers: tiny ones make loopback TCP pause 200-400
	// ms now and then (its persist timer), a stall of its own.
	a, b := tcpPair(t)
	const timeout = 300 * time.Millisecond
	var stalls atomic.Int32
	w := newStallConn(a, timeout, func() { stalls.Add(1) }).(*stallConn)
	defer w.Close()

	// A reading peer: the write completes, the watchdog disarms.
	read := make(chan error, 1)
	go func() {
		_, err := io.ReadFull(b, make([]byte, 1<<20))
		read <- err
	}()
	if _, err := w.Write(make([]byte, 1<<20)); err != nil {
		t.Fatalf("write to a reading peer: %v", err)
	}
	if err := <-read; err != nil {
		t.Fatalf("peer read: %v", err)
	}
	pollUntil(t, "the idle watchdog to stop", func() bool { return !w.armed.Load() })

	// Now the peer reads nothing: the write fills the buffers and blocks
	// until the watchdog cuts it.
	start := time.Now()
	_, err := w.Write(make([]byte, 64<<20)) // more than both sockets' buffers hold
	took := time.Since(start)
	if !errors.Is(err, errPeerNotReading) {
		t.Fatalf("write to a peer that reads nothing: %v, want %v", err, errPeerNotReading)
	}
	if took < timeout {
		t.Errorf("cut after %v, before the %v timeout", took, timeout)
	}
	pollUntil(t, "the stall to be reported", func() bool { return stalls.Load() == 1 })
	if _, err := w.Write([]byte("x")); err == nil {
		t.Error("write after the cut succeeded")
	}
	if n := stalls.Load(); n != 1 {
		t.Errorf("stalled called %d times, want 1", n)
	}
}

// pollUntil polls cond until it holds or 30 s pass (package vat's own
// tests cannot use vat_test's waitFor).
func pollUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestStallClosedNotReported: a connection closed while a write to a peer
// that reads nothing is blocked is not reported as stalled, even once the
// timeout has passed; the write fails with the close, not as not reading.
func TestStallClosedNotReported(t *testing.T) {
	a, _ := tcpPair(t)
	const timeout = 200 * time.Millisecond
	var stalls atomic.Int32
	w := newStallConn(a, timeout, func() { stalls.Add(1) }).(*stallConn)
	wrote := make(chan error, 1)
	go func() {
		_, err := w.Write(make([]byte, 64<<20))
		wrote <- err
	}()
	pollUntil(t, "the write to start", func() bool { return w.since.Load() != 0 })
	w.Close()
	if err := <-wrote; err == nil || errors.Is(err, errPeerNotReading) {
		t.Fatalf("write across Close: %v, want the close's error", err)
	}
	start := time.Now()
	// Close stopped the watchdog; had it not, it would have looked by
	// now (it looks every timeout/stallTicks).
	pollUntil(t, "twice the timeout to pass", func() bool { return time.Since(start) > 2*timeout })
	if n := stalls.Load(); n != 0 {
		t.Errorf("stalled called %d times after Close, want 0", n)
	}
}
