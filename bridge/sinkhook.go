package bridge

// This file is the Sink capability's dispatcher (newSink): a
// capnp.ClientHook that queues each call and runs the calls one at a time,
// in the order they arrived, on a worker of its owner's pool (workers: a
// parked goroutine, or a new one) while calls are queued. go-capnp's
// server.Server kept the same order with a goroutine for the Sink's whole
// life, and allocated a queue entry, a Call and an AnswerQueue per call
// (see dispatch.go, which the Sink shares capCall with).

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"

	"github.com/vatcar/vatcar/proto/captp"
)

// sinkMethods are Sink's methods as the generated code describes them,
// indexed by method id.
var sinkMethods = captp.Sink_Methods(nil, nil)

// sinkHandlers are a sinkServer's handlers, indexed by method id.
var sinkHandlers = [...]func(*sinkServer, *capCall) error{
	0: func(s *sinkServer, c *capCall) error { return s.headers(headersCall{c}) },
	1: func(s *sinkServer, c *capCall) error { return s.send(sendCall{c}) },
	2: func(s *sinkServer, c *capCall) error { return s.close(closeCall{c}) },
}

// liveSinks counts the Sinks whose Shutdown has not run yet (for tests:
// every Sink of a call that ended is released).
var liveSinks atomic.Int64

// sinkHook is the capnp.ClientHook of a Sink. It is safe for concurrent
// use; its server's handlers run one at a time.
type sinkHook struct {
	s *sinkServer
	// pool runs the drains (work): the pool of the ingress or egress that
	// serves the Sink; nil: a goroutine per drain. A ping-pong stream's
	// every call finds the queue idle and starts a drain.
	pool *workers

	mu sync.Mutex
	lk struct { // guarded by mu
		queue []*sinkCall // calls not yet run, from head on
		head  int
		// bytes is the size of the messages of the calls queued or
		// running (sinkQueueMax).
		bytes   int64
		running bool // a worker runs the queue (drain)
		shut    bool // Shutdown was called: the server's runs once the queue is empty
		ended   bool // the server's Shutdown has been started
	}
}

// sinkCall is a queued call on a Sink.
type sinkCall struct {
	capCall
	handle func(*sinkServer, *capCall) error
	size   int64 // its message's bytes, counted in lk.bytes
}

// sinkQueueMax bounds the message bytes of the calls a Sink holds queued or
// running, counting sinkCallOverhead for each: twice the window a sender
// keeps in flight (flowWindow, where a send counts its params and
// sinkCallOverhead), so a sender that honours flow control is never
// refused. A
// call past it, unless it is the only one, fails at once as Overloaded:
// without the bound a peer that ignores flow control and reads nothing
// could queue calls without end while the Sink's Returns wait on its full
// connection.
const sinkQueueMax = 2 * flowWindow

// sinkCallOverhead is what a queued call holds besides its message.
const sinkCallOverhead = 256

// sinkClient returns the Sink capability of s, whose calls run on pool's
// workers (nil: a goroutine per drain).
func sinkClient(s *sinkServer, pool *workers) captp.Sink {
	liveSinks.Add(1)
	return captp.Sink(capnp.NewClient(newSinkHook(s, pool)))
}

// newSinkHook returns the hook of s, whose calls run on pool's workers.
func newSinkHook(s *sinkServer, pool *workers) *sinkHook {
	return &sinkHook{s: s, pool: pool}
}

// method returns the method and handler m names, if Sink has it.
func (h *sinkHook) method(m capnp.Method) (capnp.Method, func(*sinkServer, *capCall) error, bool) {
	return lookupMethod(m, captp.Sink_TypeID, sinkMethods, sinkHandlers[:])
}

// Recv implements capnp.ClientHook: the call is queued behind the Sink's
// earlier calls, and a worker runs the queue if none does. An unknown
// method fails at once as Unimplemented, as under server.Server.
func (h *sinkHook) Recv(_ context.Context, r capnp.Recv) capnp.PipelineCaller {
	_, handle, ok := h.method(r.Method)
	if !ok {
		r.Reject(capnp.Unimplemented("unimplemented"))
		return nil
	}
	size := int64(sinkCallOverhead)
	if n, err := r.Args.Message().TotalSize(); err == nil {
		size += int64(n)
	}
	h.mu.Lock()
	if h.lk.bytes > 0 && h.lk.bytes+size > sinkQueueMax {
		held := h.lk.bytes
		h.mu.Unlock()
		r.Reject(exc.New(exc.Overloaded, "bridge", fmt.Sprintf("the stream's receiver holds %d bytes of calls not yet run, over its bound of %d: the sender does not wait for its calls to return", held, sinkQueueMax)))
		return nil
	}
	c := &sinkCall{capCall: capCall{recv: r}, handle: handle, size: size}
	h.lk.bytes += size
	h.lk.queue = append(h.lk.queue, c)
	start := !h.lk.running
	h.lk.running = true
	h.mu.Unlock()
	if start {
		h.pool.start(h) // never waits, for a worker or another Sink
	}
	return &c.capCall
}

// work implements job: it drains the queue.
func (h *sinkHook) work() { h.drain() }

// drain runs the queued calls in order until none is left; then, after
// Shutdown, the server's Shutdown.
func (h *sinkHook) drain() {
	// A new worker's stack is small and a Sink's handler goes deep
	// (reading the chunks, gRPC's SendMsg): grown once here, while it
	// holds almost nothing, rather than copied as the handler deepens
	// (growDrainStack; on a worker grown already, a check of the frame).
	growDrainStack()
	var ran int64 // the size of the call run last, still counted
	for {
		h.mu.Lock()
		h.lk.bytes -= ran
		ran = 0
		if h.lk.head == len(h.lk.queue) {
			clear(h.lk.queue)
			h.lk.queue, h.lk.head = h.lk.queue[:0], 0
			h.lk.running = false
			end := h.lk.shut && !h.lk.ended
			h.lk.ended = h.lk.ended || end
			h.mu.Unlock()
			if end {
				h.end()
			}
			return
		}
		c := h.lk.queue[h.lk.head]
		h.lk.queue[h.lk.head] = nil
		h.lk.head++
		if q := h.lk.queue; h.lk.head >= 32 && 2*h.lk.head >= len(q) {
			// Half of the queue is spent: move the rest to the front,
			// so a Sink that always has a call waiting (a steady
			// stream a little ahead of its target) does not grow its
			// queue, and Recv's append, by one entry per call forever.
			n := copy(q, q[h.lk.head:])
			clear(q[n:])
			h.lk.queue, h.lk.head = q[:n], 0
		}
		h.mu.Unlock()
		c.finish(c.handle(h.s, &c.capCall))
		ran = c.size
	}
}

// end runs the server's Shutdown.
func (h *sinkHook) end() {
	h.s.Shutdown()
	liveSinks.Add(-1)
}

// Send implements capnp.ClientHook: a call from this process.
func (h *sinkHook) Send(ctx context.Context, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	m, _, ok := h.method(s.Method)
	return sendAsRecv(ctx, s, m, ok, h.Recv)
}

// Brand implements capnp.ClientHook.
func (h *sinkHook) Brand() capnp.Brand { return capnp.Brand{Value: h} }

// Shutdown implements capnp.ClientHook: the last reference is gone. The
// server's Shutdown runs after the queued calls, on a goroutine (as under
// server.Server: the caller may be the engine's receive loop).
func (h *sinkHook) Shutdown() {
	h.mu.Lock()
	h.lk.shut = true
	end := !h.lk.running && !h.lk.ended
	h.lk.ended = h.lk.ended || end
	h.mu.Unlock()
	if end {
		go h.end()
	}
}

// String implements capnp.ClientHook.
func (h *sinkHook) String() string { return "bridge.Sink" }

// headersCall is a Sink.headers call.
type headersCall struct{ *capCall }

// Args returns the call's arguments.
func (c headersCall) Args() captp.Sink_headers_Params { return captp.Sink_headers_Params(c.args()) }

// sendCall is a Sink.send call.
type sendCall struct{ *capCall }

// Args returns the call's arguments.
func (c sendCall) Args() captp.Sink_send_Params { return captp.Sink_send_Params(c.args()) }

// closeCall is a Sink.close call.
type closeCall struct{ *capCall }

// Args returns the call's arguments.
func (c closeCall) Args() captp.Sink_close_Params { return captp.Sink_close_Params(c.args()) }
