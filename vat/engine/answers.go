package engine

import (
	"context"
	"slices"
	"sync/atomic"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// answer is a call (or Bootstrap) the peer sent; it is the call's
// capnp.Returner. The Returner methods run on the one goroutine that
// returns (the handler's), which owns msg, payload, content and err.
type answer struct {
	c    *Conn
	id   uint32
	ctx  callCtx                       // the call's context; cancel ends it
	args atomic.Pointer[capnp.Message] // the Call, until ReleaseArgs

	msg     *capnp.Message // the Return being built
	ret     rpccp.Return   // its root
	boot    bool           // a Bootstrap's: the peer's Finish is always needed
	payload rpccp.Payload
	content capnp.Ptr
	err     error

	// Guarded by c.mu:
	queued            []queuedCall  // pipelined calls waiting for the Return
	pipes             []*answerPipe // receiverAnswer capabilities to settle after the drain
	draining          bool          // Return is delivering queued calls
	returned          bool
	finished          bool // the peer's Finish came
	releaseResultCaps bool
	releaseParamCaps  bool           // the Return says the params' capabilities are released
	results           *capnp.Message // the Return sent, until the Finish
	resultContent     capnp.Ptr
	resultErr         error
	exported          []uint32 // exports in the Return, one reference each
	sending           bool     // the Return is being encoded: results stay
	noFinish          bool     // the Return says noFinishNeeded: no Finish will come
}

// newAnswer returns the answer to the peer's question id.
func (c *Conn) newAnswer(id uint32) *answer {
	a := &answer{c: c, id: id}
	a.ctx.c = c
	return a
}

// cancel cancels the call's context. No lock of the Conn is held.
func (a *answer) cancel() { a.ctx.cancel() }

func (a *answer) releaseArgs() {
	if m := a.args.Swap(nil); m != nil {
		m.Release()
	}
}

// newReturn starts the Return message.
func (a *answer) newReturn() (rpccp.Return, error) {
	msg, m, err := newMessage()
	if err != nil {
		return rpccp.Return{}, err
	}
	ret, err := m.NewReturn()
	if err != nil {
		msg.Release()
		return rpccp.Return{}, err
	}
	ret.SetAnswerId(a.id)
	ret.SetReleaseParamCaps(a.releaseParamCaps)
	a.msg, a.ret = msg, ret
	return ret, nil
}

func (a *answer) AllocResults(sz capnp.ObjectSize) (capnp.Struct, error) {
	ret, err := a.newReturn()
	if err != nil {
		return capnp.Struct{}, err
	}
	p, err := ret.NewResults()
	if err != nil {
		return capnp.Struct{}, err
	}
	st, err := capnp.NewStruct(p.Segment(), sz)
	if err != nil {
		return capnp.Struct{}, err
	}
	if err := p.SetContent(st.ToPtr()); err != nil {
		return capnp.Struct{}, err
	}
	a.payload, a.content = p, st.ToPtr()
	return st, nil
}

func (a *answer) PrepareReturn(e error) {
	if e == nil && a.msg != nil {
		return
	}
	if a.msg != nil {
		a.msg.Release()
		a.msg = nil
	}
	ret, err := a.newReturn()
	if err != nil {
		return
	}
	if e == nil {
		a.payload, _ = ret.NewResults()
		return
	}
	a.err = e
	if ex, err := ret.NewException(); err == nil {
		setException(ex, e)
	}
}

// returnCap answers a Bootstrap with cap (taken over).
func (a *answer) returnCap(cl capnp.Client) {
	ret, err := a.newReturn()
	if err != nil {
		cl.Release()
		return
	}
	p, err := ret.NewResults()
	if err != nil {
		cl.Release()
		return
	}
	id := a.msg.CapTable().Add(cl)
	iface := capnp.NewInterface(p.Segment(), id)
	_ = p.SetContent(iface.ToPtr())
	a.payload, a.content = p, iface.ToPtr()
	a.Return()
}

func (a *answer) Return() {
	c := a.c
	if a.msg == nil {
		a.PrepareReturn(nil)
		if a.msg == nil {
			return
		}
	}
	var caps []outCap
	if a.err == nil {
		caps = c.classify(a.msg.CapTable())
	}
	msg := a.msg
	a.msg = nil
	c.mu.Lock()
	if c.closed || c.answers[a.id] != a {
		pipes := a.pipes
		a.pipes = nil
		c.mu.Unlock()
		msg.Release()
		for _, p := range pipes {
			p.resolver.Reject(exc.New(exc.Disconnected, "", ErrClosed.Error()))
		}
		return
	}
	var exported []uint32
	if a.err == nil {
		var err error
		exported, err = c.describeLocked(a.payload, caps)
		if err != nil { // over MaxExports: the call fails instead
			c.mu.Unlock()
			if err == errTooManyExports {
				c.limit(LimitExports)
			}
			c.releaseExports(exported)
			msg.Release()
			a.PrepareReturn(err)
			a.Return()
			return
		}
	}
	a.returned = true
	a.draining = true
	a.resultContent, a.resultErr = a.content, a.err
	a.results, a.exported = msg, exported
	a.sending = true
	if a.finished {
		// The peer finished first (a cancel): once it has this Return it
		// may reuse the id at once, so the id is free before the Return
		// goes, as handleFinish frees it when the Finish comes during the
		// send. The tail below releases the results. (Calls the peer
		// pipelined on it came before its Finish: they are queued.)
		delete(c.answers, a.id)
	}
	if a.err == nil && len(caps) == 0 && !a.boot && !a.finished {
		// Results without capabilities: nothing for the peer's Finish to
		// release, so it is not asked for (noFinishNeeded) and the answer
		// goes once its queued calls are delivered (drainQueued), before
		// the Return can reach the peer, which may then reuse the id at
		// once. Calls pipelined on it that arrive later fail as they
		// would on these results (handleCall), and a Finish that comes
		// anyway (an older peer, or a cancel that crossed the Return) is
		// ignored (handleFinish).
		a.noFinish = true
		a.ret.SetNoFinishNeeded(true)
	}
	c.mu.Unlock()
	// The calls pipelined on the answer go to their targets before the
	// peer can have the Return: once it has, it may call the results'
	// capabilities directly, and those calls must not overtake them.
	c.drainQueued(a)
	_ = c.send(msg)
	c.mu.Lock()
	a.sending = false
	if !a.finished && !a.noFinish {
		// An exception's Return holds nothing pipelined calls need
		// (resultErr does): only the answer waits for the Finish.
		var rm *capnp.Message
		if a.resultErr != nil {
			rm, a.results = a.results, nil
		}
		c.mu.Unlock()
		if rm != nil {
			rm.Release()
		}
		return
	}
	// The Finish came before or while the Return was sent, or none is
	// needed (drainQueued took the answer out of the table).
	c.dropAnswerLocked(a)
}

// dropAnswerLocked forgets a returned and finished answer and unlocks
// c.mu; its results go, with the exports in them if the peer asked.
func (c *Conn) dropAnswerLocked(a *answer) {
	if c.answers[a.id] == a {
		delete(c.answers, a.id)
	}
	rm := a.results
	a.results = nil
	var exps []uint32
	if a.releaseResultCaps {
		exps = a.exported
	}
	a.exported = nil
	c.mu.Unlock()
	a.cancel()
	c.releaseExports(exps)
	if rm != nil {
		rm.Release()
	}
}

func (a *answer) ReleaseResults() {}

// resultClientLocked returns the capability at ops in the returned
// results, a new reference. c.mu is held.
func (a *answer) resultClientLocked(ops []capnp.PipelineOp) capnp.Client {
	if a.resultErr != nil {
		return capnp.ErrorClient(a.resultErr)
	}
	ptr, err := capnp.Transform(a.resultContent, ops)
	if err != nil {
		return capnp.ErrorClient(err)
	}
	iface := ptr.Interface()
	if ptr.IsValid() && !iface.IsValid() {
		return capnp.ErrorClient(errNotCap)
	}
	return iface.Client().AddRef()
}

// queuedCall is a call pipelined on an answer that has not returned, or
// (disembargo) the peer's senderLoopback Disembargo aimed at it, to be
// reflected after the calls queued before it.
type queuedCall struct {
	ctx        context.Context
	ops        []capnp.PipelineOp
	r          capnp.Recv
	disembargo bool
	embID      uint32
}

// recvOnAnswer delivers r, a call to the results of answer ta at ops: at
// once if ta has returned, else when it does (in arrival order).
func (c *Conn) recvOnAnswer(ctx context.Context, ta *answer, ops []capnp.PipelineOp, r capnp.Recv) capnp.PipelineCaller {
	c.mu.Lock()
	if c.closed {
		err := c.closedErrLocked()
		c.mu.Unlock()
		r.Reject(err)
		return errPipe{err}
	}
	if !ta.returned || ta.draining {
		ta.queued = append(ta.queued, queuedCall{ctx: ctx, ops: ops, r: r})
		c.mu.Unlock()
		return errPipe{errReturned} // never used: this engine queues pipelined calls itself
	}
	if ta.noFinish && ta.results == nil {
		// Dropped (noFinishNeeded) since handleCall found it: its results
		// message is released.
		c.mu.Unlock()
		r.Reject(errNoAnswer)
		return errPipe{errNoAnswer}
	}
	cl := ta.resultClientLocked(ops)
	c.mu.Unlock()
	defer cl.Release()
	return orErrPipe(cl.RecvCall(ctx, r), errReturned)
}

// drainQueued delivers the calls pipelined on a, in order, once it has
// returned; calls that arrive meanwhile queue behind them. Then the
// receiverAnswer capabilities of a get their resolution: calls made on
// them from then on go straight to it.
func (c *Conn) drainQueued(a *answer) {
	for {
		c.mu.Lock()
		q := a.queued
		a.queued = nil
		if len(q) == 0 {
			a.draining = false
			if a.noFinish && c.answers[a.id] == a {
				delete(c.answers, a.id)
			}
			pipes := a.pipes
			a.pipes = nil
			for _, p := range pipes {
				if !p.shut { // else its client is gone: nobody would release it
					p.resolved = a.resultClientLocked(p.transform)
				}
			}
			c.mu.Unlock()
			for _, p := range pipes {
				p.settle()
			}
			return
		}
		cls := make([]capnp.Client, len(q))
		for i, qc := range q {
			cls[i] = a.resultClientLocked(qc.ops)
			if qc.disembargo {
				c.heldDisembargoes--
			}
		}
		c.mu.Unlock()
		for i, qc := range q {
			if qc.disembargo {
				if c.Err() != nil {
					// Nothing to reflect to: the connection ended while
					// the batch was delivered (a peer that queued many).
					cls[i].Release()
					continue
				}
				c.reflectDisembargo(cls[i], qc.embID) // takes cls[i]
				continue
			}
			cls[i].RecvCall(qc.ctx, qc.r)
			cls[i].Release()
		}
	}
}

// handleCall dispatches a call from the peer to its target.
func (c *Conn) handleCall(msg *capnp.Message, m rpccp.Message) bool {
	call, err := m.Call()
	var (
		params  rpccp.Payload
		content capnp.Ptr
		list    rpccp.CapDescriptor_List
		tgt     rpccp.MessageTarget
	)
	if err == nil {
		params, err = call.Params()
	}
	if err == nil {
		content, err = params.Content()
	}
	if err == nil {
		list, err = params.CapTable()
	}
	if err == nil {
		tgt, err = call.Target()
	}
	if err != nil {
		msg.Release()
		c.abort("unreadable Call: " + err.Error())
		return false
	}
	qid := call.QuestionId()
	a := c.newAnswer(qid)
	a.args.Store(msg)

	var (
		target   capnp.Client
		onAnswer *answer
		ops      []capnp.PipelineOp
		reject   error
	)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		msg.Release()
		return false
	}
	if c.answers[qid] != nil {
		c.mu.Unlock()
		msg.Release()
		c.abort("Call reuses a question id in use")
		return false
	}
	if reason, refuse := c.admitAnswerLocked(); reason != "" {
		c.mu.Unlock()
		msg.Release()
		c.closeForLimit(LimitAnswersHeld, reason)
		return false
	} else if refuse != nil { // its capabilities go back, one Release each
		c.refuseAnswerLocked(a, refuse, list, false, LimitAnswers)
		return true
	}
	_, failed, err := c.importCapsLocked(msg, list)
	if err != nil && err != errTooManyImports {
		c.mu.Unlock()
		msg.Release()
		c.abort("bad Call: " + err.Error())
		return false
	}
	c.answers[qid] = a
	if err != nil { // over MaxImports: this call fails, the connection lives
		c.mu.Unlock()
		c.refuseImports(list, failed)
		a.releaseArgs()
		c.limit(LimitImports) // before the peer can see the refusal
		a.PrepareReturn(err)
		a.Return()
		return true
	}
	switch tgt.Which() {
	case rpccp.MessageTarget_Which_importedCap:
		// Borrowed: only this loop's Release handling or shutdown (which
		// waits for this loop) drop exports.
		cl, ok := c.exportClientLocked(tgt.ImportedCap())
		if ok {
			target = cl
		} else {
			reject = exc.New(exc.Failed, "", "call to an unknown export")
		}
	case rpccp.MessageTarget_Which_promisedAnswer:
		pa, err := tgt.PromisedAnswer()
		if err == nil {
			ops, err = readTransform(pa)
		}
		if err == nil {
			onAnswer = c.answers[pa.QuestionId()]
			if onAnswer == nil || onAnswer == a {
				// Also a call pipelined on results that held no
				// capability, sent before their Return (noFinishNeeded)
				// reached the peer: it would fail on them anyway.
				onAnswer = nil
				reject = errNoAnswer
			}
		} else {
			reject = err
		}
	default:
		reject = exc.New(exc.Unimplemented, "", "unknown call target")
	}
	if reject == nil && call.SendResultsTo().Which() != rpccp.Call_sendResultsTo_Which_caller {
		reject = errSendResultTo
	}
	baseErr := c.ctx.Err() // after the answer's entry: see watchBase
	c.mu.Unlock()

	ctx := context.Context(&a.ctx)
	if baseErr != nil {
		a.ctx.cancelWith(baseErr)
	}
	r := capnp.Recv{
		Method:      capnp.Method{InterfaceID: call.InterfaceId(), MethodID: call.MethodId()},
		Args:        content.Struct(),
		ReleaseArgs: a.releaseArgs,
		Returner:    a,
	}
	switch {
	case reject != nil:
		r.Reject(reject)
	case onAnswer != nil:
		c.recvOnAnswer(ctx, onAnswer, ops, r)
	default:
		target.RecvCall(ctx, r)
	}
	return true
}

// handleFinish ends an answer: a running call is cancelled, returned
// results are dropped.
func (c *Conn) handleFinish(m rpccp.Message) bool {
	fin, err := m.Finish()
	if err != nil {
		c.abort("unreadable Finish")
		return false
	}
	c.mu.Lock()
	a := c.answers[fin.QuestionId()]
	if a == nil {
		// Returned with noFinishNeeded: the peer may finish anyway (the
		// spec's "silently ignored"; go-capnp v3.1.0-alpha.2, C++ 0.9 and
		// OCaml always do), and a cancel may cross the Return. It frees
		// the id only after this Finish, so the id names no newer call.
		// Not told apart from a Finish that names nothing: that would mean
		// remembering every such id until the peer reuses it, which it
		// may never do (docs/design.md).
		c.mu.Unlock()
		return true
	}
	if a.finished {
		c.mu.Unlock()
		c.abort("Finish for a question already finished")
		return false
	}
	a.finished = true
	a.releaseResultCaps = fin.ReleaseResultCaps()
	if a.sending {
		// Return is delivering the queued calls or sending the Return (a
		// peer may finish early, and once it has the Return its id may
		// come again at once): Return releases the results when its send
		// is over.
		delete(c.answers, a.id)
	}
	if !a.returned || a.sending {
		c.mu.Unlock()
		a.cancel() // Return finishes the job
		return true
	}
	c.dropAnswerLocked(a)
	return true
}

// answerPipe is a capability the peer named as receiverAnswer: a pipeline
// on one of its calls to this side that has not returned yet. It is the
// hook of a promised client: once the answer has returned and its queued
// calls are delivered, drainQueued fulfils the promise with the
// capability at transform (resolved, a reference of its own), so nothing
// reads the answer's results after its Finish; shutdown rejects it.
type answerPipe struct {
	c         *Conn
	a         *answer
	transform []capnp.PipelineOp
	resolver  capnp.Resolver[capnp.Client]

	resolved capnp.Client // guarded by c.mu; owned until Shutdown
	shut     bool         // guarded by c.mu: Shutdown ran
}

// newAnswerPipe returns a promised client for a's results at ops, settled
// by drainQueued. c.mu is held.
func (c *Conn) newAnswerPipeLocked(a *answer, ops []capnp.PipelineOp) capnp.Client {
	p := &answerPipe{c: c, a: a, transform: ops}
	cl, r := capnp.NewPromisedClient(p)
	p.resolver = r
	a.pipes = append(a.pipes, p)
	return cl
}

// settle fulfils p's promise with its resolution (Fulfill then shuts p
// down, which releases it).
func (p *answerPipe) settle() {
	p.c.mu.Lock()
	cl := p.resolved.AddRef()
	p.c.mu.Unlock()
	if !cl.IsValid() { // released meanwhile
		return
	}
	p.resolver.Fulfill(cl) // borrows cl
	cl.Release()
}

// target returns p's resolution (a new reference) if it has one.
func (p *answerPipe) target() (capnp.Client, bool) {
	p.c.mu.Lock()
	defer p.c.mu.Unlock()
	if !p.resolved.IsValid() {
		return capnp.Client{}, false
	}
	return p.resolved.AddRef(), true
}

func (p *answerPipe) Send(ctx context.Context, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	return sendAsRecv(ctx, s, p.Recv)
}

// sendAsRecv makes a local Send into a Recv for hooks that queue received
// calls (answerPipe, embargoHook): the params are placed in a message of
// their own, released once the call is done with them.
func sendAsRecv(ctx context.Context, s capnp.Send, recv func(context.Context, capnp.Recv) capnp.PipelineCaller) (*capnp.Answer, capnp.ReleaseFunc) {
	msg, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		return capnp.ErrorAnswer(s.Method, err), func() {}
	}
	args, err := capnp.NewRootStruct(seg, s.ArgsSize)
	if err == nil && s.PlaceArgs != nil {
		err = s.PlaceArgs(args)
	}
	if err != nil {
		msg.Release()
		return capnp.ErrorAnswer(s.Method, err), func() {}
	}
	ret := new(capnp.StructReturner)
	pc := recv(ctx, capnp.Recv{Method: s.Method, Args: args, ReleaseArgs: msg.Release, Returner: ret})
	return ret.Answer(s.Method, pc)
}

func (p *answerPipe) Recv(ctx context.Context, r capnp.Recv) capnp.PipelineCaller {
	if cl, ok := p.target(); ok { // a call that raced the fulfilment
		defer cl.Release()
		return orErrPipe(cl.RecvCall(ctx, r), errReturned)
	}
	return p.c.recvOnAnswer(ctx, p.a, p.transform, r)
}

func (p *answerPipe) Brand() capnp.Brand { return capnp.Brand{Value: p} }
func (p *answerPipe) Shutdown() {
	p.c.mu.Lock()
	cl := p.resolved
	p.resolved, p.shut = capnp.Client{}, true
	// Leave the answer's list: a peer naming a running answer in cap
	// tables or Resolves without end must not grow it (the pipe would
	// stay listed until the answer returned).
	if i := slices.Index(p.a.pipes, p); i >= 0 {
		last := len(p.a.pipes) - 1
		p.a.pipes[i] = p.a.pipes[last]
		p.a.pipes[last] = nil
		p.a.pipes = p.a.pipes[:last]
	}
	p.c.mu.Unlock()
	cl.Release()
}
func (p *answerPipe) String() string { return "engine.answerPipe" }
