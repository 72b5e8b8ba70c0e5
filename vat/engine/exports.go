package engine

import (
	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// export is a capability of this side the peer holds references to.
type export struct {
	client capnp.Client // owned
	refs   uint32       // references the peer holds (descriptors sent, less Releases)
}

// capKind says how a capability is described to the peer.
type capKind uint8

const (
	kindNone   capKind = iota // a null capability
	kindExport                // this side's: senderHosted
	kindImport                // the peer's own: receiverHosted
	kindAnswer                // a pipeline on a question to the peer: receiverAnswer
)

// outCap is a capability about to be described to the peer.
type outCap struct {
	kind      capKind
	id        uint32 // kindImport: the import id
	q         *question
	transform []capnp.PipelineOp
	client    capnp.Client // kindExport, kindAnswer: borrowed from the message's table
}

// classify looks at the capabilities of an outgoing message. It calls into
// the clients, so c.mu must not be held.
func (c *Conn) classify(t *capnp.CapTable) []outCap {
	n := t.Len()
	if n == 0 {
		return nil
	}
	out := make([]outCap, n)
	for i := range out {
		cl := t.At(i)
		if !cl.IsValid() {
			continue
		}
		snap := cl.Snapshot()
		b := snap.Brand()
		snap.Release()
		switch v := b.Value.(type) {
		case *importClient:
			if v.c == c {
				out[i] = outCap{kind: kindImport, id: v.id}
				continue
			}
		case capnp.PipelineClient:
			if q := c.questionOf(v.Answer()); q != nil {
				out[i] = outCap{kind: kindAnswer, q: q, transform: v.Transform(), client: cl}
				continue
			}
		}
		out[i] = outCap{kind: kindExport, client: cl}
	}
	return out
}

// describeLocked writes caps as the payload's cap table and returns the
// export ids it used (one reference each). c.mu is held.
func (c *Conn) describeLocked(p rpccp.Payload, caps []outCap) ([]uint32, error) {
	if len(caps) == 0 {
		return nil, nil
	}
	list, err := p.NewCapTable(int32(len(caps)))
	if err != nil {
		return nil, err
	}
	var ids []uint32
	for i, oc := range caps {
		d := list.At(i)
		switch oc.kind {
		case kindNone:
			d.SetNone()
			continue
		case kindImport:
			if _, ok := c.imports[oc.id]; ok {
				d.SetReceiverHosted(oc.id)
				continue
			}
		case kindAnswer:
			if !oc.q.returned && !oc.q.finished && c.questionLocked(oc.q.id) == oc.q {
				pa, err := d.NewReceiverAnswer()
				if err != nil {
					return ids, err
				}
				if err := writePromisedAnswer(pa, oc.q.id, oc.transform); err != nil {
					return ids, err
				}
				continue
			}
		}
		if !oc.client.IsValid() {
			d.SetNone()
			continue
		}
		if len(c.exports)-len(c.efree) >= capLimit(c.opts.MaxExports) {
			return ids, errTooManyExports
		}
		id := c.exportLocked(oc.client)
		d.SetSenderHosted(id)
		ids = append(ids, id)
	}
	return ids, nil
}

// exportLocked adds a reference for the peer to cl (borrowed) and returns
// its export id. c.mu is held.
func (c *Conn) exportLocked(cl capnp.Client) uint32 {
	e := &export{client: cl.AddRef(), refs: 1}
	if n := len(c.efree); n > 0 {
		id := c.efree[n-1]
		c.efree = c.efree[:n-1]
		c.exports[id] = e
		return id
	}
	c.exports = append(c.exports, e)
	return uint32(len(c.exports) - 1)
}

// exportClientLocked returns the client of export id, borrowed, or false.
func (c *Conn) exportClientLocked(id uint32) (capnp.Client, bool) {
	if int(id) >= len(c.exports) || c.exports[id] == nil {
		return capnp.Client{}, false
	}
	return c.exports[id].client, true
}

// releaseExportLocked drops n of the peer's references to export id and
// returns the client to release (after unlocking) once none is left; ok is
// false if the peer held fewer than n. c.mu is held.
func (c *Conn) releaseExportLocked(id, n uint32) (capnp.Client, bool) {
	if int(id) >= len(c.exports) || c.exports[id] == nil || c.exports[id].refs < n {
		return capnp.Client{}, false
	}
	e := c.exports[id]
	e.refs -= n
	if e.refs > 0 {
		return capnp.Client{}, true
	}
	c.exports[id] = nil
	c.efree = append(c.efree, id)
	return e.client, true
}

// releaseExports drops one reference of each id (the caps of a Return or
// a Call the peer released implicitly).
func (c *Conn) releaseExports(ids []uint32) {
	if len(ids) == 0 {
		return
	}
	var drop []capnp.Client
	c.mu.Lock()
	for _, id := range ids {
		if cl, _ := c.releaseExportLocked(id, 1); cl.IsValid() {
			drop = append(drop, cl)
		}
	}
	c.mu.Unlock()
	for _, cl := range drop {
		cl.Release()
	}
}

// handleRelease handles the peer's Release of an export.
func (c *Conn) handleRelease(m rpccp.Message) bool {
	rel, err := m.Release()
	if err != nil {
		c.abort("unreadable Release")
		return false
	}
	c.mu.Lock()
	cl, ok := c.releaseExportLocked(rel.Id(), rel.ReferenceCount())
	c.mu.Unlock()
	if !ok {
		c.abort("Release of an export the peer does not hold")
		return false
	}
	cl.Release()
	return true
}
