package engine

import (
	"context"
	"fmt"
	"sync"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// embargo holds calls to target (a capability on this side that a promise
// of the peer's resolved to) until the Disembargo this side sent comes
// back: the calls sent to the promise before it resolved loop back through
// the peer first, so E-order is kept.
type embargo struct {
	id   uint32
	hook *embargoHook
}

// pathEmbargo is an embargo on the capability at path in a question's
// results.
type pathEmbargo struct {
	id   uint32
	path []capnp.PipelineOp
}

// embargoLocked takes target and returns a client (owned by the caller)
// that queues calls until the embargo lifts, then passes them on in order.
// c.mu is held.
func (c *Conn) embargoLocked(target capnp.Client) (capnp.Client, *embargo) {
	h := &embargoHook{target: target}
	c.nextEmb++
	e := &embargo{id: c.nextEmb, hook: h}
	c.embargoes[e.id] = e
	return capnp.NewClient(h), e
}

// embargoHook is an embargoed capability. Calls pipelined on a call made
// while it is embargoed fail until that call returns.
//
// Locking: mu guards every field.
type embargoHook struct {
	mu       sync.Mutex
	target   capnp.Client // owned
	queue    []queuedCall
	lifted   bool  // calls go straight to target (once the queue drained)
	draining bool  // lift is delivering the queue
	err      error // the embargo failed (the connection ended)
}

var errEmbargoed = exc.New(exc.Failed, "", "pipelined call on a call held by an embargo")

func (h *embargoHook) Recv(ctx context.Context, r capnp.Recv) capnp.PipelineCaller {
	h.mu.Lock()
	switch {
	case h.err != nil:
		err := h.err
		h.mu.Unlock()
		r.Reject(err)
		return errPipe{err}
	case !h.lifted || h.draining:
		h.queue = append(h.queue, queuedCall{ctx: ctx, r: r})
		h.mu.Unlock()
		return errPipe{errEmbargoed}
	}
	t := h.target.AddRef()
	h.mu.Unlock()
	defer t.Release()
	return orErrPipe(t.RecvCall(ctx, r), errReturned)
}

func (h *embargoHook) Send(ctx context.Context, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	h.mu.Lock()
	if h.lifted && !h.draining && h.err == nil {
		t := h.target.AddRef()
		h.mu.Unlock()
		defer t.Release()
		return t.SendCall(ctx, s)
	}
	h.mu.Unlock()
	return sendAsRecv(ctx, s, h.Recv)
}

// lift delivers the queued calls in order, then lets calls through.
func (h *embargoHook) lift() {
	for {
		h.mu.Lock()
		q := h.queue
		h.queue = nil
		if len(q) == 0 || h.err != nil {
			h.lifted, h.draining = true, false
			h.mu.Unlock()
			return
		}
		h.draining = true
		t := h.target.AddRef()
		h.mu.Unlock()
		for _, qc := range q {
			t.RecvCall(qc.ctx, qc.r)
		}
		t.Release()
	}
}

// fail rejects the queued calls and every later one with err.
func (h *embargoHook) fail(err error) {
	h.mu.Lock()
	q := h.queue
	h.queue = nil
	if h.err == nil {
		h.err = err
	}
	h.mu.Unlock()
	for _, qc := range q {
		qc.r.Reject(err)
	}
}

func (h *embargoHook) Brand() capnp.Brand { return capnp.Brand{Value: h} }

func (h *embargoHook) Shutdown() {
	h.fail(exc.New(exc.Failed, "", "embargoed capability released"))
	h.mu.Lock()
	t := h.target
	h.target = capnp.Client{}
	h.mu.Unlock()
	t.Release()
}

func (h *embargoHook) String() string { return "engine.embargo" }

// embargoResultsLocked embargoes the capabilities of this side in a
// question's results that pipelined calls went to, replacing them in the
// results' cap table. c.mu is held.
func (c *Conn) embargoResultsLocked(msg *capnp.Message, content capnp.Ptr, local []bool, paths [][]capnp.PipelineOp) []pathEmbargo {
	t := msg.CapTable()
	var out []pathEmbargo
	done := make(map[capnp.CapabilityID]bool)
	for _, path := range paths {
		ptr, err := capnp.Transform(content, path)
		if err != nil {
			continue
		}
		iface := ptr.Interface()
		if !iface.IsValid() {
			continue
		}
		idx := iface.Capability()
		if int(idx) >= len(local) || !local[idx] || done[idx] {
			continue
		}
		done[idx] = true
		p, e := c.embargoLocked(t.At(int(idx)))
		t.Set(idx, p)
		out = append(out, pathEmbargo{id: e.id, path: path})
	}
	return out
}

// sendDisembargoAnswer sends a senderLoopback Disembargo to the results of
// question qid at path.
func (c *Conn) sendDisembargoAnswer(embID, qid uint32, path []capnp.PipelineOp) {
	c.sendDisembargo(func(t rpccp.MessageTarget) error {
		pa, err := t.NewPromisedAnswer()
		if err != nil {
			return err
		}
		return writePromisedAnswer(pa, qid, path)
	}, embID, true)
}

// sendDisembargoSender sends a senderLoopback Disembargo to import id.
func (c *Conn) sendDisembargoSender(embID, importID uint32) {
	c.sendDisembargo(func(t rpccp.MessageTarget) error {
		t.SetImportedCap(importID)
		return nil
	}, embID, true)
}

func (c *Conn) sendDisembargo(target func(rpccp.MessageTarget) error, embID uint32, sender bool) {
	msg, m, err := newMessage()
	if err != nil {
		return
	}
	defer msg.Release()
	d, err := m.NewDisembargo()
	if err != nil {
		return
	}
	t, err := d.NewTarget()
	if err != nil || target(t) != nil {
		return
	}
	if sender {
		d.Context().SetSenderLoopback(embID)
	} else {
		d.Context().SetReceiverLoopback(embID)
	}
	_ = c.send(msg)
}

// reflectDisembargo sends the peer's senderLoopback embID back to it as a
// receiverLoopback on cl (taken over), which must be one of the peer's
// own capabilities; anything else is a protocol violation.
func (c *Conn) reflectDisembargo(cl capnp.Client, embID uint32) bool {
	snap := cl.Snapshot()
	h, ok := snap.Brand().Value.(*importClient)
	snap.Release()
	cl.Release()
	if !ok || h.c != c {
		c.abort("Disembargo target does not point back to the sender")
		return false
	}
	c.sendDisembargo(func(t rpccp.MessageTarget) error {
		t.SetImportedCap(h.id)
		return nil
	}, embID, false)
	return true
}

// handleDisembargo reflects the peer's senderLoopback back to it and lifts
// this side's embargoes on receiverLoopback.
func (c *Conn) handleDisembargo(msg *capnp.Message, m rpccp.Message) bool {
	d, err := m.Disembargo()
	if err != nil {
		c.abort("unreadable Disembargo")
		return false
	}
	dc := d.Context()
	switch dc.Which() {
	case rpccp.Disembargo_context_Which_senderLoopback:
		tgt, err := d.Target()
		if err != nil {
			c.abort("unreadable Disembargo target")
			return false
		}
		var cl capnp.Client
		c.mu.Lock()
		switch tgt.Which() {
		case rpccp.MessageTarget_Which_importedCap:
			if e, ok := c.exportClientLocked(tgt.ImportedCap()); ok {
				cl = e.AddRef()
			}
		case rpccp.MessageTarget_Which_promisedAnswer:
			pa, err := tgt.PromisedAnswer()
			var ops []capnp.PipelineOp
			if err == nil {
				ops, err = readTransform(pa)
			}
			if a := c.answers[pa.QuestionId()]; err == nil && a != nil && a.returned {
				if a.draining {
					// Calls pipelined on the answer are still being
					// delivered (back to the peer): the reflection goes
					// after them, or the peer would lift its embargo
					// before they arrive.
					if max := c.answerLimit(); max > 0 && c.heldDisembargoes >= max {
						// Nothing answers a Disembargo, so it cannot be
						// refused; a peer holding this many is not waiting
						// for its calls to come back.
						c.mu.Unlock()
						c.closeForLimit(LimitAnswersHeld, fmt.Sprintf("answer budget: the peer has %d Disembargos waiting for pipelined calls to be delivered, the budget of answers", max))
						return false
					}
					c.heldDisembargoes++
					a.queued = append(a.queued, queuedCall{ops: ops, disembargo: true, embID: dc.SenderLoopback()})
					c.mu.Unlock()
					return true
				}
				cl = a.resultClientLocked(ops)
			}
		}
		c.mu.Unlock()
		return c.reflectDisembargo(cl, dc.SenderLoopback())
	case rpccp.Disembargo_context_Which_receiverLoopback:
		c.mu.Lock()
		e := c.embargoes[dc.ReceiverLoopback()]
		delete(c.embargoes, dc.ReceiverLoopback())
		c.mu.Unlock()
		if e == nil {
			c.abort("Disembargo for an unknown embargo")
			return false
		}
		e.hook.lift()
	default:
		out, om, err := newMessage()
		if err == nil {
			if err = om.SetUnimplemented(m); err == nil {
				_ = c.send(out)
			}
			out.Release()
		}
	}
	return true
}
