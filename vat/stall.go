package vat

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// stallChunk is the most one write hands the connection under one
// WriteStallTimeout: one TLS record. A peer that reads at all lets a new
// chunk start every stallChunk bytes, however large the message, so only a
// peer reading less than stallChunk per WriteStallTimeout (1 KiB/s at the
// default 15 s) is cut. A finer rule would need the bytes moving under TLS.
const stallChunk = 16 << 10

// errPeerNotReading is the cause of a write that made no progress for
// Config.WriteStallTimeout.
var errPeerNotReading = errors.New("the peer read nothing while messages waited for it")

// stallConn bounds how long a write may make no progress: each chunk of a
// write gets WriteStallTimeout. A peer that reads nothing while this side's
// messages queue for it (replies it asked for, say) leaves the codec's
// pending bytes at their bound and the senders blocked; past the timeout
// the connection is closed and stalled is called, once. It is the one
// per-connection limit that closes rather than fails a call: a peer that
// does not read cannot be told.
//
// The bound is a watchdog, not a write deadline: setting and clearing a
// deadline around every write cost two runtime timer updates per message
// (1-1.5% of a sidecar's CPU at 64 calls in flight). A write notes when
// its current chunk started; a timer, armed by the first write after an
// idle spell, looks stallTicks times per timeout and closes the connection when a chunk
// has been in the kernel for longer than the timeout, so a stall is cut
// between the timeout and a quarter more. The timer stops once it finds
// no write in progress.
type stallConn struct {
	net.Conn
	timeout time.Duration
	stalled func()
	base    time.Time // since is measured from it (monotonic)
	dog     *time.Timer

	// since is when the current chunk's write began (nanoseconds after
	// base, plus one), 0 while no write is in progress. The one writer
	// (the codec writes one message at a time) stores it; the watchdog
	// reads it.
	since atomic.Int64
	// armed: the watchdog's timer is set. A write sets it (and the
	// timer) after storing since; the watchdog clears it and then looks
	// at since again, so a write is never left without a watchdog.
	armed  atomic.Bool
	cut    atomic.Bool // the watchdog closed the connection
	closed atomic.Bool // Close was called: a stall is no longer reported
	// once is taken by the watchdog's report and close, or by Close: the
	// first decides whether a stall is reported.
	once sync.Once
}

// stallTicks is how many looks the watchdog takes per timeout.
const stallTicks = 4

func newStallConn(c net.Conn, timeout time.Duration, stalled func()) net.Conn {
	if timeout <= 0 {
		return c
	}
	s := &stallConn{Conn: c, timeout: timeout, stalled: stalled, base: time.Now()}
	s.dog = time.AfterFunc(time.Hour, s.watch)
	s.dog.Stop()
	return s
}

// now returns the time since base, plus one (never 0).
func (c *stallConn) now() int64 { return int64(time.Since(c.base)) + 1 }

// watch is the watchdog's tick.
func (c *stallConn) watch() {
	for {
		if s := c.since.Load(); s != 0 {
			if c.closed.Load() {
				c.armed.Store(false)
				return // closed for another reason while the write waited
			}
			if time.Duration(c.now()-s) > c.timeout {
				c.once.Do(func() {
					c.cut.Store(true)
					// Reported before the close, as when the
					// writer reported it: the connection's teardown
					// (which the close starts) then follows it.
					if c.stalled != nil {
						c.stalled()
					}
					c.Conn.Close() // the write fails, the receive loop ends
				})
				c.armed.Store(false)
				return
			}
			c.dog.Reset(c.timeout / stallTicks)
			return
		}
		c.armed.Store(false)
		// A write may have begun after the load above and seen the
		// timer still armed: look again.
		if c.since.Load() == 0 || !c.armed.CompareAndSwap(false, true) {
			return
		}
	}
}

func (c *stallConn) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		chunk := b[:min(len(b), stallChunk)]
		c.since.Store(c.now())
		if !c.armed.Load() && c.armed.CompareAndSwap(false, true) {
			c.dog.Reset(c.timeout / stallTicks)
		}
		m, err := c.Conn.Write(chunk)
		n += m
		b = b[m:]
		if err != nil {
			c.since.Store(0)
			if c.cut.Load() {
				return n, fmt.Errorf("%w for %v", errPeerNotReading, c.timeout)
			}
			return n, err
		}
	}
	c.since.Store(0)
	return n, nil
}

// Close stops the watchdog and closes the connection. A stall the
// watchdog has not begun to report by then is not reported: Close takes
// once (and waits for a report under way, which stalled keeps short).
func (c *stallConn) Close() error {
	c.closed.Store(true)
	c.once.Do(func() {})
	c.dog.Stop()
	return c.Conn.Close()
}
