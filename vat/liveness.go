package vat

import (
	"net"
	"sync/atomic"
	"time"

	"github.com/vatcar/vatcar/proto/captp"
)

// activity records when bytes last arrived on a connection, as time since
// the connection started (monotonic).
type activity struct {
	start time.Time
	last  atomic.Int64 // nanoseconds after start
}

func newActivity() *activity { return &activity{start: time.Now()} }

func (a *activity) now() int64 { return int64(time.Since(a.start)) }

// readSince reports whether bytes arrived at or after t (a value of now).
func (a *activity) readSince(t int64) bool { return a.last.Load() >= t }

// activityConn is a net.Conn that stamps an activity on every read that
// returns bytes.
type activityConn struct {
	net.Conn
	act *activity
}

func (c activityConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.act.last.Store(c.act.now())
	}
	return n, err
}

// heartbeat closes c when its peer stops answering: once nothing has
// arrived for an interval, it restores the empty id on the peer's Restorer
// (the peer answers "Unknown persistent service ID", or anything else: an
// answer is all that counts) and closes c if neither the answer nor any
// other bytes come within the timeout. It looks every quarter interval, so
// a frozen peer is found within 1.25 intervals plus the timeout of its last
// bytes (about 29 s with the defaults), and the calls in flight on it fail
// then with Disconnected.
func (v *Vat) heartbeat(c *Connection) {
	defer v.wg.Done()
	interval, timeout := v.cfg.heartbeatInterval(), v.cfg.heartbeatTimeout()
	tick := time.NewTicker(max(interval/4, time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-c.conn.Done():
			return
		case <-tick.C:
		}
		if c.act.readSince(c.act.now() - int64(interval)) {
			continue // the peer talked within the interval
		}
		if !c.ping(timeout) {
			return
		}
	}
}

// ping makes the heartbeat's round trip and reports whether the peer is
// alive: it answered, or sent other bytes, within timeout, or the
// connection ended meanwhile (the watcher sees to that). If not, ping
// closes c. The wait does not
// rely on the call's context, whose cancellation needs a Finish message
// to be queued on a connection that may be stuck.
func (c *Connection) ping(timeout time.Duration) bool {
	start := c.act.now()
	fut, release := c.restorer().Restore(c.vat.ctx, func(captp.Restorer_restore_Params) error {
		return nil // the empty id
	})
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	alive := true
	select {
	case <-fut.Done():
	case <-c.conn.Done():
	case <-c.vat.ctx.Done():
	case <-timer.C:
		alive = c.act.readSince(start)
	}
	if !alive {
		c.log.Info("peer did not answer the heartbeat; closing the connection", "timeout", timeout.String())
		c.closeBecause("peer did not answer the heartbeat within " + timeout.String())
		if f := c.vat.cfg.OnRefused; f != nil {
			f(RefusedHeartbeat)
		}
	}
	select {
	case <-fut.Done():
		release()
	default:
		// Unanswered, and the connection is ending: release would wait
		// for go-capnp's shutdown to reject the question, which it may
		// never do when the question's Finish is queued just as the
		// connection closes. The question goes with the connection.
	}
	return alive
}
