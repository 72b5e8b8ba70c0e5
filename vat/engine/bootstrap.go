package engine

import (
	"context"
	"fmt"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

var bootstrapMethod = capnp.Method{InterfaceName: "Bootstrap", MethodName: "bootstrap"}

// Bootstrap asks the peer for its bootstrap capability. The client is a
// promise: calls on it are pipelined until the Return comes.
func (c *Conn) Bootstrap(ctx context.Context) capnp.Client {
	return c.bootstrap(ctx, nil, false)
}

// BootstrapID asks the peer for the capability with object id, OCaml
// capnp-rpc's and C++ EzRpc's way (deprecatedObjectId, as a Text).
func (c *Conn) BootstrapID(ctx context.Context, id []byte) capnp.Client {
	return c.bootstrap(ctx, id, true)
}

func (c *Conn) bootstrap(ctx context.Context, id []byte, withID bool) capnp.Client {
	msg, m, err := newMessage()
	if err != nil {
		return capnp.ErrorClient(err)
	}
	defer msg.Release()
	b, err := m.NewBootstrap()
	if err != nil {
		return capnp.ErrorClient(err)
	}
	if withID {
		t, err := capnp.NewTextFromBytes(b.Segment(), id)
		if err == nil {
			err = b.SetDeprecatedObjectId(t.ToPtr())
		}
		if err != nil {
			return capnp.ErrorClient(err)
		}
	}
	q := &question{c: c, method: bootstrapMethod}
	q.p = capnp.NewPromise(bootstrapMethod, q, nil)
	cl, r := capnp.NewPromisedClient(&bootHook{q: q})
	q.boot = r
	c.mu.Lock()
	if c.closed {
		err := c.closedErrLocked()
		c.mu.Unlock()
		q.resolve(capnp.Ptr{}, err)
		cl.Release()
		return capnp.ErrorClient(err)
	}
	c.newQuestionLocked(q)
	b.SetQuestionId(q.id)
	c.mu.Unlock()
	_ = c.send(msg)
	return cl
}

// bootHook is the bootstrap promise until the Return comes.
type bootHook struct{ q *question }

func (h *bootHook) Send(ctx context.Context, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	return h.q.PipelineSend(ctx, nil, s)
}

func (h *bootHook) Recv(ctx context.Context, r capnp.Recv) capnp.PipelineCaller {
	return h.q.PipelineRecv(ctx, nil, r)
}

func (h *bootHook) Brand() capnp.Brand { return capnp.Brand{Value: h} }
func (h *bootHook) Shutdown()          { h.q.release() }
func (h *bootHook) String() string     { return "engine.bootstrap" }

// handleBootstrap answers the peer's Bootstrap: with an object id, the
// restorer's capability for it; without, the bootstrap capability.
func (c *Conn) handleBootstrap(m rpccp.Message) bool {
	b, err := m.Bootstrap()
	if err != nil {
		c.abort("unreadable Bootstrap")
		return false
	}
	var id []byte
	hasID := b.HasDeprecatedObjectId()
	if hasID {
		p, err := b.DeprecatedObjectId()
		if err != nil {
			c.abort("unreadable Bootstrap object id")
			return false
		}
		raw := p.TextBytes() // C++ and OCaml send a Text
		if raw == nil {
			raw = p.Data()
		}
		id = append([]byte(nil), raw...)
	}
	qid := b.QuestionId()
	a := c.newAnswer(qid)
	a.boot = true
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return false
	}
	if c.answers[qid] != nil {
		c.mu.Unlock()
		c.abort("Bootstrap reuses a question id in use")
		return false
	}
	if reason, refuse := c.admitAnswerLocked(); reason != "" {
		c.mu.Unlock()
		c.closeForLimit(LimitAnswersHeld, reason)
		return false
	} else if refuse != nil {
		c.refuseAnswerLocked(a, refuse, rpccp.CapDescriptor_List{}, false, LimitAnswers)
		return true
	}
	c.answers[qid] = a
	ctx := context.Context(&a.ctx)
	if err := c.ctx.Err(); err != nil { // after the answer's entry: see watchBase
		a.ctx.cancelWith(err) // nothing registered with it yet: c.mu may be held
	}
	if !hasID {
		boot := c.boot.AddRef()
		c.mu.Unlock()
		if !boot.IsValid() {
			a.PrepareReturn(errNoBootstrap)
			a.Return()
			return true
		}
		a.returnCap(boot)
		return true
	}
	if c.opts.Restore == nil {
		c.mu.Unlock()
		text := c.opts.NoRestorer
		if text == "" {
			text = "no restorer"
		}
		a.PrepareReturn(exc.New(exc.Failed, "", text))
		a.Return()
		return true
	}
	if max := c.restoreLimit(); max > 0 && c.restoring >= max {
		// Refused from the receive loop: its Return waits for room in the
		// send queue like any other, so a peer that reads nothing is no
		// longer read either.
		// OnLimit hears of it before the peer can: a refusal seen is
		// counted.
		c.mu.Unlock()
		c.limit(LimitRestores)
		a.PrepareReturn(exc.New(exc.Overloaded, "", fmt.Sprintf("too many restores running on this connection (%d)", max)))
		a.Return()
		return true
	}
	// The restore may block: it runs on its own goroutine, and calls
	// pipelined on the answer meanwhile queue in it (recvOnAnswer).
	c.restoring++
	c.tasks.Add(1)
	c.mu.Unlock()
	go func() {
		defer func() {
			c.mu.Lock()
			c.restoring--
			c.mu.Unlock()
			c.tasks.Done()
		}()
		cl, err := c.opts.Restore(ctx, id)
		if err == nil && !cl.IsValid() {
			err = exc.New(exc.Failed, "", "restore returned no capability")
		}
		if err != nil {
			a.PrepareReturn(err)
			a.Return()
			return
		}
		a.returnCap(cl)
	}()
	return true
}
