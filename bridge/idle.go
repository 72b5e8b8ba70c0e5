package bridge

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// idleWatch ends a stream on which no message has passed, either way, for
// a while (EgressConfig.StreamIdleTimeout, IngressConfig.StreamIdleTimeout).
// Each message stores the time; one timer per stream wakes when the stream
// could first be idle for the whole timeout, and either ends it or waits
// for the rest.
type idleWatch struct {
	timeout time.Duration
	last    atomic.Int64 // unix nanoseconds of the last message
	end     func()       // ends the stream (set by arm); called at most once, on the timer's goroutine

	mu      sync.Mutex  // guards timer (set by arm, reset by check) and stopped
	timer   *time.Timer // nil until armed
	stopped bool        // stop was called: check neither resets nor ends
}

// watchIdle starts watching a stream that end ends, or returns nil when
// timeout is not positive. end must do nothing to a stream already over.
func watchIdle(timeout time.Duration, end func()) *idleWatch {
	w := new(idleWatch).init(timeout)
	w.arm(end)
	return w
}

// init makes w record messages (arm starts watching, once the call turns
// out to be a stream) and returns it; nil, and w unused, when timeout is
// not positive. A watch kept inside a call costs the call no allocation
// until it is armed.
func (w *idleWatch) init(timeout time.Duration) *idleWatch {
	if timeout <= 0 {
		return nil
	}
	w.timeout = timeout
	w.touch()
	return w
}

// arm starts the timer, from the last message; end ends the stream. Nil-
// safe; call it once, on the goroutine that calls stop.
func (w *idleWatch) arm(end func()) {
	if w != nil {
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.stopped {
			return
		}
		w.end = end // before the timer that reads it starts
		w.timer = time.AfterFunc(idleLeft(w.last.Load(), time.Now().UnixNano(), w.timeout), w.check)
	}
}

// touch records a message. Nil-safe.
func (w *idleWatch) touch() {
	if w != nil {
		w.last.Store(time.Now().UnixNano())
	}
}

// stop stops the timer, if armed. Nil-safe.
func (w *idleWatch) stop() {
	if w == nil {
		return
	}
	w.mu.Lock()
	w.stopped = true
	if w.timer != nil {
		w.timer.Stop()
	}
	w.mu.Unlock()
}

// check ends the stream if it has been idle for the timeout, else waits
// for the rest.
func (w *idleWatch) check() {
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		return
	}
	if wait := idleLeft(w.last.Load(), time.Now().UnixNano(), w.timeout); wait > 0 {
		w.timer.Reset(wait)
		w.mu.Unlock()
		return
	}
	w.mu.Unlock()
	w.end()
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
