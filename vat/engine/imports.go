package engine

import (
	"context"
	"strconv"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// importEntry counts the references this side holds to one of the peer's
// capabilities: one per descriptor received, each owned by one
// importClient, which gives it back with a Release when shut down.
type importEntry struct {
	refs      uint32
	resolvers []*importClient // promise hooks not yet resolved
}

// importClient is the hook of a capability the peer hosts. Each holds one
// reference on the wire.
type importClient struct {
	c       *Conn
	id      uint32
	promise bool
	// resolver fulfils the promised client (promise imports only).
	resolver capnp.Resolver[capnp.Client]
	// resolved is what the promise resolved to; calls that reach the hook
	// after that go there. Guarded by c.mu.
	resolved capnp.Client
}

// importCapLocked turns a received descriptor into a client (a new
// reference); local says it is this side's own capability (receiverHosted
// or receiverAnswer), which may need an embargo. c.mu is held.
func (c *Conn) importCapLocked(d rpccp.CapDescriptor) (cl capnp.Client, local bool, err error) {
	switch d.Which() {
	case rpccp.CapDescriptor_Which_none:
		return capnp.Client{}, false, nil
	case rpccp.CapDescriptor_Which_senderHosted:
		return c.newImportLocked(d.SenderHosted(), false)
	case rpccp.CapDescriptor_Which_senderPromise:
		return c.newImportLocked(d.SenderPromise(), true)
	case rpccp.CapDescriptor_Which_thirdPartyHosted:
		tp, err := d.ThirdPartyHosted()
		if err != nil {
			return capnp.Client{}, false, err
		}
		return c.newImportLocked(tp.VineId(), false)
	case rpccp.CapDescriptor_Which_receiverHosted:
		e, ok := c.exportClientLocked(d.ReceiverHosted())
		if !ok {
			return capnp.Client{}, false, exc.New(exc.Failed, "", "receiverHosted names no export: "+strconv.Itoa(int(d.ReceiverHosted())))
		}
		return e.AddRef(), true, nil
	case rpccp.CapDescriptor_Which_receiverAnswer:
		pa, err := d.ReceiverAnswer()
		if err != nil {
			return capnp.Client{}, false, err
		}
		ops, err := readTransform(pa)
		if err != nil {
			return capnp.Client{}, false, err
		}
		a := c.answers[pa.QuestionId()]
		if a == nil {
			// Unknown, or returned with noFinishNeeded before the
			// descriptor's message reached here: results without
			// capabilities, so a broken capability either way.
			return capnp.ErrorClient(errNoAnswer), false, nil
		}
		if a.returned && !a.draining {
			return a.resultClientLocked(ops), true, nil
		}
		return c.newAnswerPipeLocked(a, ops), true, nil
	}
	return capnp.Client{}, false, exc.New(exc.Failed, "", "unknown capability descriptor "+strconv.Itoa(int(d.Which())))
}

// newImportLocked counts one more reference to import id and returns a
// client owning it; past MaxImports it fails with errTooManyImports. c.mu
// is held.
func (c *Conn) newImportLocked(id uint32, promise bool) (capnp.Client, bool, error) {
	e := c.imports[id]
	if e == nil {
		if len(c.imports) >= capLimit(c.opts.MaxImports) {
			return capnp.Client{}, false, errTooManyImports
		}
		e = &importEntry{}
		c.imports[id] = e
	}
	e.refs++
	h := &importClient{c: c, id: id, promise: promise}
	if !promise {
		return capnp.NewClient(h), false, nil
	}
	cl, r := capnp.NewPromisedClient(h)
	h.resolver = r
	e.resolvers = append(e.resolvers, h)
	return cl, false, nil
}

// refuseImports gives back the references of the descriptors in list from
// index from on (they were not imported: over MaxImports).
func (c *Conn) refuseImports(list rpccp.CapDescriptor_List, from int) {
	for i := from; i < list.Len(); i++ {
		c.giveBack(list.At(i))
	}
}

// giveBack releases the reference a descriptor not imported carries: one
// Release for a sender-hosted capability or promise, nothing for the rest.
func (c *Conn) giveBack(d rpccp.CapDescriptor) {
	switch d.Which() {
	case rpccp.CapDescriptor_Which_senderHosted:
		c.sendRelease(d.SenderHosted(), 1)
	case rpccp.CapDescriptor_Which_senderPromise:
		c.sendRelease(d.SenderPromise(), 1)
	}
}

// importCapsLocked fills msg's cap table from the descriptors in list and
// reports which entries are this side's own. On errTooManyImports, failed
// is the index of the first descriptor not imported. c.mu is held.
func (c *Conn) importCapsLocked(msg *capnp.Message, list rpccp.CapDescriptor_List) (local []bool, failed int, err error) {
	n := list.Len()
	if n == 0 {
		return nil, 0, nil
	}
	t := msg.CapTable()
	for i := 0; i < n; i++ {
		cl, loc, err := c.importCapLocked(list.At(i))
		if err != nil {
			return local, i, err
		}
		if loc {
			if local == nil {
				local = make([]bool, n)
			}
			local[i] = true
		}
		t.Add(cl)
	}
	return local, 0, nil
}

func (h *importClient) Send(ctx context.Context, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	q, redirect, err := h.c.startCall(ctx, callTarget{imp: h}, s.Method, s.PlaceArgs, s.ArgsSize, nil)
	if redirect != nil {
		defer redirect.Release()
		return redirect.SendCall(ctx, s)
	}
	if err != nil {
		return capnp.ErrorAnswer(s.Method, err), func() {}
	}
	return q.p.Answer(), q.release
}

func (h *importClient) Recv(ctx context.Context, r capnp.Recv) capnp.PipelineCaller {
	return h.c.forward(ctx, callTarget{imp: h}, r)
}

func (h *importClient) Brand() capnp.Brand { return capnp.Brand{Value: h} }

// Shutdown gives the hook's reference back to the peer.
func (h *importClient) Shutdown() {
	c := h.c
	c.mu.Lock()
	resolved := h.resolved
	h.resolved = capnp.Client{}
	delete(c.resolvedHooks, h)
	if c.closed {
		c.mu.Unlock()
		resolved.Release()
		return
	}
	e := c.imports[h.id]
	if e == nil || e.refs == 0 {
		c.mu.Unlock()
		resolved.Release()
		return
	}
	if h.promise {
		for i, r := range e.resolvers {
			if r == h {
				e.resolvers = append(e.resolvers[:i], e.resolvers[i+1:]...)
				break
			}
		}
	}
	e.refs--
	if e.refs == 0 {
		delete(c.imports, h.id)
	}
	c.mu.Unlock()
	resolved.Release()
	c.sendRelease(h.id, 1)
}

func (h *importClient) String() string { return "engine.import(" + strconv.Itoa(int(h.id)) + ")" }

// sendRelease tells the peer this side dropped n references to import id.
func (c *Conn) sendRelease(id, n uint32) {
	msg, m, err := newMessage()
	if err != nil {
		return
	}
	defer msg.Release()
	rel, err := m.NewRelease()
	if err != nil {
		return
	}
	rel.SetId(id)
	rel.SetReferenceCount(n)
	_ = c.send(msg)
}

// handleResolve settles a promise the peer exported.
func (c *Conn) handleResolve(msg *capnp.Message, m rpccp.Message) bool {
	defer msg.Release()
	res, err := m.Resolve()
	if err != nil {
		c.abort("unreadable Resolve")
		return false
	}
	id := res.PromiseId()
	var (
		to     capnp.Client
		rerr   error
		local  bool
		refuse rpccp.CapDescriptor
	)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return false
	}
	if c.imports[id] == nil {
		// A promise this side no longer holds (released while the Resolve
		// was on its way): nothing is imported, not even for a moment (a
		// receiverAnswer would pin its answer until it returned); the
		// reference a sender-hosted resolution carries goes back.
		c.mu.Unlock()
		if res.Which() == rpccp.Resolve_Which_cap {
			if d, err := res.Cap(); err == nil {
				c.giveBack(d)
			}
		}
		return true
	}
	switch res.Which() {
	case rpccp.Resolve_Which_cap:
		d, err := res.Cap()
		if err == nil {
			to, local, err = c.importCapLocked(d)
		}
		if err == errTooManyImports { // the promise breaks; the reference goes back
			refuse = d
			to, err = capnp.ErrorClient(errTooManyImports), nil
		}
		if err != nil {
			c.mu.Unlock()
			c.abort("bad Resolve: " + err.Error())
			return false
		}
	case rpccp.Resolve_Which_exception:
		e, err := res.Exception()
		if err != nil {
			c.mu.Unlock()
			c.abort("unreadable Resolve exception")
			return false
		}
		rerr = exceptionError(e)
	default:
		c.mu.Unlock()
		c.abort("unknown kind of Resolve")
		return false
	}
	var hooks []*importClient
	if e := c.imports[id]; e != nil {
		hooks = e.resolvers
		e.resolvers = nil
	}
	var emb *embargo
	resolution := to // owned
	if rerr != nil {
		resolution = capnp.ErrorClient(rerr)
	} else if local && len(hooks) > 0 {
		// Calls sent to the promise come back to this side through the
		// peer; later ones must wait for them.
		resolution, emb = c.embargoLocked(to)
	}
	for _, h := range hooks {
		h.resolved = resolution.AddRef()
		c.resolvedHooks[h] = struct{}{}
	}
	c.mu.Unlock()

	if emb != nil {
		c.barrier()
		c.sendDisembargoSender(emb.id, id)
	}
	if refuse.IsValid() {
		c.limit(LimitImports)
		c.giveBack(refuse)
	}
	for _, h := range hooks {
		h.resolver.Fulfill(resolution)
	}
	resolution.Release()
	return true
}
