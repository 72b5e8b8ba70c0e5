package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
)

// openStreamsConns is how many client connections carry the open streams, so no one
// HTTP/2 connection needs more than a few thousand concurrent streams.
const openStreamsConns = 10

// heldStreams is a set of open PingPong streams, each of which has completed one round
// trip through the path.
type heldStreams struct {
	ctx    context.Context
	cancel context.CancelFunc
	conns  []*grpc.ClientConn
	opened int
}

// Close ends every stream and connection.
func (h *heldStreams) Close() {
	h.cancel()
	for _, cc := range h.conns {
		cc.Close()
	}
}

// newHeldStreams returns an empty set whose streams live until Close or until ctx
// ends.
func newHeldStreams(ctx context.Context) *heldStreams {
	sctx, cancel := context.WithCancel(ctx)
	return &heldStreams{ctx: sctx, cancel: cancel}
}

// Open opens n PingPong streams to target and does one round trip on each, so every
// proxy on the way holds the whole stream. It stops at the timeout and reports how
// many it holds.
func (h *heldStreams) Open(target string, n int, timeout time.Duration) error {
	sctx := h.ctx
	for range openStreamsConns {
		cc, err := dial(target)
		if err != nil {
			return err
		}
		h.conns = append(h.conns, cc)
	}
	deadline := time.Now().Add(timeout)
	var next, opened atomic.Int64
	var errOnce sync.Once
	var firstErr error
	var wg sync.WaitGroup
	for range 64 { // openers
		wg.Go(func() {
			msg := []byte("open")
			for {
				i := next.Add(1) - 1
				if i >= int64(n) || time.Now().After(deadline) || sctx.Err() != nil {
					return
				}
				octx, ocancel := context.WithDeadline(sctx, deadline)
				err := openOne(sctx, octx, h.conns[i%openStreamsConns], msg)
				ocancel()
				if err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
				opened.Add(1)
			}
		})
	}
	wg.Wait()
	h.opened = int(opened.Load())
	if firstErr != nil {
		return fmt.Errorf("open stream %d of %d: %w", h.opened+1, n, firstErr)
	}
	if h.opened < n {
		return fmt.Errorf("opened %d of %d streams in %v", h.opened, n, timeout)
	}
	return nil
}

// openOne opens a stream that lives as long as sctx and does one round trip on it
// within octx's deadline.
func openOne(sctx, octx context.Context, cc *grpc.ClientConn, msg []byte) error {
	s, err := cc.NewStream(sctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, methodPingPong)
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() {
		if err := s.SendMsg(&msg); err != nil {
			done <- err
			return
		}
		var resp []byte
		done <- s.RecvMsg(&resp)
	}()
	select {
	case err := <-done:
		return err
	case <-octx.Done():
		return octx.Err()
	}
}
