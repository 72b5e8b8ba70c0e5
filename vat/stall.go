package vat

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// stallChunk is the most one write hands the connection under one write
// deadline: one TLS record. A peer that reads at all gets a fresh
// deadline every stallChunk bytes, however large the message, so only a
// peer reading less than stallChunk per WriteStallTimeout (1 KiB/s at the
// default 15 s) is cut. A finer rule would need the bytes moving under TLS:
// a write that times out leaves a tls.Conn broken, so the deadline cannot
// simply be extended.
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
type stallConn struct {
	net.Conn
	timeout time.Duration
	once    *sync.Once
	stalled func()
}

func newStallConn(c net.Conn, timeout time.Duration, stalled func()) net.Conn {
	if timeout <= 0 {
		return c
	}
	return stallConn{Conn: c, timeout: timeout, once: new(sync.Once), stalled: stalled}
}

func (c stallConn) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		chunk := b[:min(len(b), stallChunk)]
		_ = c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
		m, err := c.Conn.Write(chunk)
		n += m
		b = b[m:]
		if err == nil {
			if len(b) == 0 {
				// No deadline left behind: crypto/tls writes from its
				// read path too (a KeyUpdate's answer).
				_ = c.Conn.SetWriteDeadline(time.Time{})
			}
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			c.once.Do(func() {
				c.Conn.Close() // the receive loop ends too
				if c.stalled != nil {
					c.stalled()
				}
			})
			return n, fmt.Errorf("%w for %v", errPeerNotReading, c.timeout)
		}
		return n, err
	}
	return n, nil
}
