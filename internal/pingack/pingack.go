package pingack

import (
	"bytes"
	"net"
	"sync"
	"time"
)

// Delay bounds how long Conn holds a PING acknowledgement.
// The app's gRPC client and the backend's server (grpc-go's defaults, and
// others') send a PING for their flow-control (BDP) estimate with nearly
// every message when few calls are in flight; grpc-go answers at once, in a
// write of its own, long before the call's response exists to share it.
// Held, the acknowledgement leaves with the connection's next write (the
// response, usually) or after Delay: the peer then measures a round
// trip up to this much longer, with more bytes in it; its windows may grow
// a little sooner or later, never shrink. A keepalive PING waits for its
// acknowledgement for seconds (20 s by default).
const Delay = 2 * time.Millisecond

// pingAck is an HTTP/2 PING frame with the ACK flag, without its 8 bytes of
// data: length 8, type PING (6), flags ACK (1), stream 0.
var pingAck = []byte{0, 0, 8, 6, 1, 0, 0, 0, 0}

// pingAckSize is the size of a whole PING ACK frame.
const pingAckSize = 9 + 8

// Conn is an HTTP/2 connection whose lone PING acknowledgements wait
// for company: a Write that is exactly one PING ACK frame is held (and
// reported written) until the next Write, which sends both in one write,
// or until Delay passes. Every other Write goes out at once, behind
// a held acknowledgement; order is kept. Its one writer is grpc-go's.
type Conn struct {
	net.Conn

	mu     sync.Mutex // guards the fields below, and is held while writing
	held   []byte     // a PING ACK frame waiting, or empty
	buf    []byte     // held's storage, and the joined write's
	timer  *time.Timer
	delay  time.Duration // how long a frame is held: Delay
	err    error         // the failed write of a held frame, returned by the next Write
	closed bool
}

// New returns c holding PING ACKs for at most delay.
func New(c net.Conn, delay time.Duration) *Conn {
	p := &Conn{Conn: c, buf: make([]byte, 0, 4<<10), delay: delay}
	p.timer = time.AfterFunc(time.Hour, p.flushHeld)
	p.timer.Stop()
	return p
}

func (p *Conn) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return 0, p.err
	}
	if p.closed {
		return 0, net.ErrClosed
	}
	if len(p.held) == 0 && len(b) == pingAckSize && bytes.HasPrefix(b, pingAck) {
		p.held = append(p.buf[:0], b...)
		p.timer.Reset(p.delay)
		return len(b), nil
	}
	if len(p.held) == 0 {
		return p.Conn.Write(b)
	}
	p.timer.Stop()
	held := p.held
	p.held = nil
	if len(b) <= cap(p.buf)-len(held) {
		joined := append(held, b...)
		n, err := p.Conn.Write(joined)
		return max(n-len(held), 0), err
	}
	if _, err := p.Conn.Write(held); err != nil {
		return 0, err
	}
	return p.Conn.Write(b)
}

// flushHeld writes a held acknowledgement that found no company.
func (p *Conn) flushHeld() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.held) == 0 {
		return
	}
	if _, err := p.Conn.Write(p.held); err != nil && p.err == nil {
		p.err = err
	}
	p.held = nil
}

// Close sends a held acknowledgement first unless a write is under way
// (one stuck on a peer that does not read must not keep Close waiting),
// then closes the connection.
func (p *Conn) Close() error {
	p.timer.Stop()
	if p.mu.TryLock() {
		if len(p.held) > 0 && p.err == nil {
			_, _ = p.Conn.Write(p.held)
		}
		p.held, p.closed = nil, true
		p.mu.Unlock()
	}
	return p.Conn.Close()
}
