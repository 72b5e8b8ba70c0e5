package engine

import (
	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// embargo holds calls to target (a capability on this side that a promise
// of the peer's resolved to) until the Disembargo this side sent comes
// back: the calls sent to the promise before it resolved loop back through
// the peer first, so E-order is kept.
type embargo struct {
	id       uint32
	target   capnp.Client // owned until fulfilled
	resolver capnp.Resolver[capnp.Client]
}

// pathEmbargo is an embargo on the capability at path in a question's
// results.
type pathEmbargo struct {
	id   uint32
	path []capnp.PipelineOp
}

// embargoLocked takes target and returns a promise of it (owned by the
// caller) that resolves when the embargo lifts. c.mu is held.
func (c *Conn) embargoLocked(target capnp.Client) (capnp.Client, *embargo) {
	p, r := capnp.NewLocalPromise[capnp.Client]()
	c.nextEmb++
	e := &embargo{id: c.nextEmb, target: target, resolver: r}
	c.embargoes[e.id] = e
	return p, e
}

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
				cl = a.resultClientLocked(ops)
			}
		}
		c.mu.Unlock()
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
		}, dc.SenderLoopback(), false)
	case rpccp.Disembargo_context_Which_receiverLoopback:
		c.mu.Lock()
		e := c.embargoes[dc.ReceiverLoopback()]
		delete(c.embargoes, dc.ReceiverLoopback())
		c.mu.Unlock()
		if e == nil {
			c.abort("Disembargo for an unknown embargo")
			return false
		}
		e.resolver.Fulfill(e.target)
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
