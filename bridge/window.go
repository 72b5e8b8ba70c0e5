package bridge

import (
	"context"
	"sync"
)

// window is a sender's flow control: it bounds the bytes of the Sink.send
// calls in flight (flowWindow), whichever path sent them, and keeps the
// first failed send's error. It replaces go-capnp's flow limiter, which
// would keep the sends off the engine's direct path (engine.SendDirect).
// Safe for concurrent use: a send's Return is reported by the engine's
// receive goroutine (direct path) or a goroutine of the sender's (normal
// path).
type window struct {
	mu sync.Mutex
	// Guarded by mu:
	bytes int           // of the sends in flight
	calls int           // sends in flight
	err   error         // the first failed send's
	wake  chan struct{} // closed when a send returns; nil if nobody waits
}

// acquire waits until a send of n bytes fits in the window, bytes and
// calls (maxSendsInFlight), or no send is in flight, and counts it in
// flight. It returns the first failed send's
// error instead, or ctx's if ctx ends first.
func (w *window) acquire(ctx context.Context, n int) error {
	w.mu.Lock()
	for {
		if w.err != nil {
			err := w.err
			w.mu.Unlock()
			return err
		}
		if w.calls == 0 || w.bytes+n <= flowWindow && w.calls < maxSendsInFlight {
			w.bytes += n
			w.calls++
			w.mu.Unlock()
			return nil
		}
		if err := w.waitLocked(ctx); err != nil {
			return err
		}
	}
}

// waitLocked waits for a send to return, or for ctx to end (then it
// returns ctx's error with w.mu unlocked). w.mu is held on entry, and on
// return without error.
func (w *window) waitLocked(ctx context.Context) error {
	if w.wake == nil {
		w.wake = make(chan struct{})
	}
	wake := w.wake
	w.mu.Unlock()
	select {
	case <-wake:
	case <-ctx.Done():
		return ctx.Err()
	}
	w.mu.Lock()
	return nil
}

// release is the Return of a send of n bytes that acquire counted; err is
// its failure, if any. It does not block.
func (w *window) release(n int, err error) {
	w.mu.Lock()
	w.bytes -= n
	w.calls--
	if err != nil && w.err == nil {
		w.err = err
	}
	if w.wake != nil {
		close(w.wake)
		w.wake = nil
	}
	w.mu.Unlock()
}

// drain waits until no send is in flight and returns the first failed
// send's error, or ctx's if ctx ends first.
func (w *window) drain(ctx context.Context) error {
	w.mu.Lock()
	for w.calls > 0 {
		if err := w.waitLocked(ctx); err != nil {
			return err
		}
	}
	err := w.err
	w.mu.Unlock()
	return err
}
