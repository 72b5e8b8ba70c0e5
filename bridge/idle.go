package bridge

import (
	"fmt"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// idleWatch ends a stream on which no message has passed, either way, for
// a while (EgressConfig.StreamIdleTimeout). Each message stores the time;
// one timer per stream wakes when the stream could first be idle for the
// whole timeout, and either ends it or waits for the rest.
type idleWatch struct {
	timeout time.Duration
	last    atomic.Int64 // unix nanoseconds of the last message
	timer   *time.Timer
}

// watchIdle starts watching c, or returns nil when timeout is not positive.
func watchIdle(c *egressCall, timeout time.Duration) *idleWatch {
	if timeout <= 0 {
		return nil
	}
	w := &idleWatch{timeout: timeout}
	w.touch()
	w.timer = time.AfterFunc(timeout, func() { w.check(c) })
	return w
}

// touch records a message. Nil-safe.
func (w *idleWatch) touch() {
	if w != nil {
		w.last.Store(time.Now().UnixNano())
	}
}

// stop stops the timer. Nil-safe.
func (w *idleWatch) stop() {
	if w != nil {
		w.timer.Stop()
	}
}

// check ends c if it has been idle for the timeout, else waits for the rest.
func (w *idleWatch) check(c *egressCall) {
	c.mu.Lock()
	over := c.over
	c.mu.Unlock()
	if over {
		return
	}
	if wait := idleLeft(w.last.Load(), time.Now().UnixNano(), w.timeout); wait > 0 {
		w.timer.Reset(wait)
		return
	}
	c.e.log.Debug("bridge: idle stream ended", "method", c.head.method, "idle", w.timeout.String())
	c.fail(idleStatus(w.timeout))
}

// idleLeft returns how much longer a stream whose last message passed at
// last (unix nanoseconds) may stay idle at now; zero or less: it is over.
func idleLeft(last, now int64, timeout time.Duration) time.Duration {
	return timeout - time.Duration(now-last)
}

// idleStatus is the status an idle stream ends with: DEADLINE_EXCEEDED,
// naming the setting.
func idleStatus(timeout time.Duration) *status.Status {
	return status.New(codes.DeadlineExceeded, fmt.Sprintf("vatcar: stream idle for %v (--stream-idle-timeout)", timeout))
}
