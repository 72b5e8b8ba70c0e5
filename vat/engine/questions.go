package engine

import (
	"context"
	"errors"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// question is a call (or Bootstrap) this side sent and the peer answers.
type question struct {
	c      *Conn
	id     uint32
	method capnp.Method
	p      *capnp.Promise
	// boot, for a Bootstrap, fulfils the promised client handed out.
	boot capnp.Resolver[capnp.Client]
	// fwd, for a call forwarded from a capnp.Recv, gets the results.
	fwd capnp.Returner
	// direct, for a CallDirect call, gets the results; p is nil then.
	direct *directCall

	// Guarded by c.mu:
	returned     bool                 // the Return came (or the question failed locally)
	finished     bool                 // a Finish is due or sent: no other may be
	finishSent   bool                 // the Finish is encoded (or not needed)
	settled      bool                 // p is resolved
	released     bool                 // the caller released the answer
	pipelined    [][]capnp.PipelineOp // transforms of calls sent to the results
	paramExports []uint32             // exports in the params, one reference each
	results      *capnp.Message       // the Return, until released
	stopCancel   Watch                // stops the AfterCancel
}

// callTarget is where a call goes: an import, or a question's results.
type callTarget struct {
	imp       *importClient
	q         *question
	transform []capnp.PipelineOp
}

// questionLocked returns the live question id, or nil. c.mu is held.
func (c *Conn) questionLocked(id uint32) *question {
	if int(id) >= len(c.questions) {
		return nil
	}
	return c.questions[id]
}

// newQuestionLocked gives q an id. c.mu is held.
func (c *Conn) newQuestionLocked(q *question) {
	if n := len(c.qfree); n > 0 {
		q.id = c.qfree[n-1]
		c.qfree = c.qfree[:n-1]
		c.questions[q.id] = q
		return
	}
	q.id = uint32(len(c.questions))
	c.questions = append(c.questions, q)
}

// freeQuestionLocked frees q's id once it is returned and finished. c.mu
// is held.
func (c *Conn) freeQuestionLocked(q *question) {
	if !q.returned || !q.finishSent || c.questionLocked(q.id) != q {
		return
	}
	c.questions[q.id] = nil
	c.qfree = append(c.qfree, q.id)
	if q.p != nil {
		delete(c.byAnswer, q.p.Answer())
	}
}

// questionOf returns the live question whose answer is ans, or nil.
func (c *Conn) questionOf(ans *capnp.Answer) *question {
	c.mu.Lock()
	defer c.mu.Unlock()
	q := c.byAnswer[ans]
	if q == nil || q.returned || c.questionLocked(q.id) != q {
		return nil
	}
	return q
}

// buildCall builds a Call message for m with its params placed, to be
// released with sm.release. With a size hint (WithSizeHint) it is built in a pooled
// buffer; if the params do not fit there (and hold no capabilities), it is
// built again the usual way.
func buildCall(hint int, m capnp.Method, place func(capnp.Struct) error, sz capnp.ObjectSize) (sm sizedMessage, call rpccp.Call, params rpccp.Payload, err error) {
	if hint > 0 && place != nil {
		sm, mm, ok, err := newSizedMessage(hint)
		if err != nil {
			return sizedMessage{}, rpccp.Call{}, rpccp.Payload{}, err
		}
		if ok {
			call, params, err := fillCall(mm, m, place, sz)
			// The target and the capability descriptors are written
			// after the params: they need room too.
			caps := sm.msg.CapTable().Len()
			if err == nil && sm.spare() >= hintSlack/2+32*caps {
				return sm, call, params, nil
			}
			sm.release()
			if caps > 0 {
				// place put capabilities in: not placed again (the release
				// just released them).
				if err == nil {
					err = errors.New("a call with a size hint carries capabilities")
				}
				return sizedMessage{}, rpccp.Call{}, rpccp.Payload{}, err
			}
		}
	}
	msg, seg, err := newCallMessage(capnp.SingleSegment(nil))
	if err != nil {
		return sizedMessage{}, rpccp.Call{}, rpccp.Payload{}, err
	}
	sm = sizedMessage{msg: msg}
	mm, err := rpccp.NewRootMessage(seg)
	if err != nil {
		sm.release()
		return sizedMessage{}, rpccp.Call{}, rpccp.Payload{}, err
	}
	call, params, err = fillCall(mm, m, place, sz)
	if err != nil {
		sm.release()
		return sizedMessage{}, rpccp.Call{}, rpccp.Payload{}, err
	}
	return sm, call, params, nil
}

// fillCall makes mm a Call of m and places its params.
func fillCall(mm rpccp.Message, m capnp.Method, place func(capnp.Struct) error, sz capnp.ObjectSize) (rpccp.Call, rpccp.Payload, error) {
	call, err := mm.NewCall()
	if err != nil {
		return rpccp.Call{}, rpccp.Payload{}, err
	}
	call.SetInterfaceId(m.InterfaceID)
	call.SetMethodId(m.MethodID)
	params, err := call.NewParams()
	if err != nil {
		return rpccp.Call{}, rpccp.Payload{}, err
	}
	if place != nil {
		st, err := capnp.NewStruct(params.Segment(), sz)
		if err != nil {
			return rpccp.Call{}, rpccp.Payload{}, err
		}
		if err := params.SetContent(st.ToPtr()); err != nil {
			return rpccp.Call{}, rpccp.Payload{}, err
		}
		if err := place(st); err != nil {
			return rpccp.Call{}, rpccp.Payload{}, exc.WrapError("place args", err)
		}
	}
	return call, params, nil
}

// startCall sends a call to t. place fills the params (sz big). When t is
// a promise that has settled, nothing is sent and redirect (a reference
// the caller releases) is where the call must go instead.
func (c *Conn) startCall(ctx context.Context, t callTarget, m capnp.Method, place func(capnp.Struct) error, sz capnp.ObjectSize, fwd capnp.Returner) (q *question, redirect *capnp.Client, err error) {
	if t.q != nil || t.imp != nil && t.imp.promise {
		// Sent to a promise: ordered against its settling (see order).
		c.order.RLock()
		c.mu.Lock()
		switch {
		case c.closed:
			err = c.closedErrLocked()
		case t.q != nil && (t.q.returned || t.q.finished):
			c.mu.Unlock()
			// Its Return is being handled (the receive loop may be in
			// barrier, waiting for this very read lock before it resolves
			// the answer), or it was cancelled or released and is being
			// settled with that error: the lock goes before the wait.
			c.order.RUnlock()
			cl := t.q.waitClient(ctx, t.transform)
			return nil, &cl, nil
		case t.imp != nil && t.imp.resolved.IsValid():
			cl := t.imp.resolved.AddRef()
			c.mu.Unlock()
			c.order.RUnlock()
			return nil, &cl, nil
		case t.q != nil:
			t.q.pipelined = append(t.q.pipelined, t.transform)
		}
		c.mu.Unlock()
		if err != nil {
			c.order.RUnlock()
			return nil, nil, err
		}
		defer c.order.RUnlock()
	}
	sm, call, params, err := buildCall(sizeHint(ctx), m, place, sz)
	if err != nil {
		return nil, nil, err
	}
	defer sm.release()
	msg := sm.msg
	tgt, err := call.NewTarget()
	if err != nil {
		return nil, nil, err
	}
	caps := c.classify(msg.CapTable())
	q = &question{c: c, method: m, fwd: fwd}
	q.p = capnp.NewPromise(m, q, nil)

	c.mu.Lock()
	if c.closed {
		err := c.closedErrLocked()
		c.mu.Unlock()
		return nil, nil, err
	}
	if t.q != nil && (t.q.finished || c.questionLocked(t.q.id) != t.q) {
		// Cancelled or released while the params were built: its id may
		// already name another question, so nothing may be sent to it.
		c.mu.Unlock()
		return nil, nil, exc.New(exc.Failed, "", "call pipelined on a question that was cancelled")
	}
	if t.imp != nil {
		tgt.SetImportedCap(t.imp.id)
	} else {
		pa, err := tgt.NewPromisedAnswer()
		if err == nil {
			err = writePromisedAnswer(pa, t.q.id, t.transform)
		}
		if err != nil {
			c.mu.Unlock()
			return nil, nil, err
		}
	}
	c.newQuestionLocked(q)
	c.byAnswer[q.p.Answer()] = q // a map the Conn keeps: the answer's Metadata map would allocate per call
	call.SetQuestionId(q.id)
	if err := c.describeParamsUnlock(q, params, caps); err != nil {
		return nil, nil, err
	}

	_ = c.send(msg) // a failure ends the connection, which fails q
	if ctx.Done() != nil {
		// The closure takes a copy: capturing the result q itself would
		// move it to the heap, an allocation per call even when no
		// context can end.
		cq := q
		stop := AfterCancel(ctx, func() { cq.cancel(ctx) })
		c.mu.Lock()
		if q.settled {
			stop.Stop()
		} else {
			q.stopCancel = stop
		}
		c.mu.Unlock()
	}
	return q, nil, nil
}

// waitClient waits for a returned question's results and returns the
// client at transform (a new reference).
func (q *question) waitClient(ctx context.Context, transform []capnp.PipelineOp) capnp.Client {
	ans := q.p.Answer()
	select {
	case <-ans.Done():
	case <-ctx.Done():
		return capnp.ErrorClient(ctx.Err())
	}
	f := ans.Future()
	for _, op := range transform {
		f = f.Field(op.Field, op.DefaultValue)
	}
	return f.Client().AddRef()
}

// forward sends a received call (r) on to t: the results go to r's
// Returner when the Return comes.
func (c *Conn) forward(ctx context.Context, t callTarget, r capnp.Recv) capnp.PipelineCaller {
	place := func(st capnp.Struct) error { return st.CopyFrom(r.Args) }
	sz := capnp.ObjectSize{}
	if r.Args.IsValid() {
		sz = r.Args.Size()
	} else {
		place = nil
	}
	q, redirect, err := c.startCall(ctx, t, r.Method, place, sz, r.Returner)
	if redirect != nil {
		defer redirect.Release()
		return orErrPipe(redirect.RecvCall(ctx, r), errReturned)
	}
	if err != nil {
		r.Reject(err)
		return errPipe{err}
	}
	r.ReleaseArgs()
	return q
}

// cancel is the caller's context ending before the Return: the peer gets
// a Finish and the call fails with the context's error.
func (q *question) cancel(ctx context.Context) {
	c := q.c
	c.mu.Lock()
	if q.returned || q.finished || c.closed {
		c.mu.Unlock()
		return
	}
	q.finished = true
	c.mu.Unlock()
	c.finish(q, true)
	q.resolve(capnp.Ptr{}, ctx.Err())
}

// release is the ReleaseFunc of a call's answer.
func (q *question) release() {
	c := q.c
	c.mu.Lock()
	if q.released {
		c.mu.Unlock()
		return
	}
	q.released = true
	cancel := !q.returned && !q.finished && !c.closed
	if cancel {
		q.finished = true
	}
	rm := q.results
	q.results = nil
	c.mu.Unlock()
	if cancel {
		c.finish(q, true)
	}
	q.resolve(capnp.Ptr{}, errReleased) // no-op if settled; else nothing else will
	if q.p != nil {
		q.p.ReleaseClients()
	}
	if rm != nil {
		rm.Release()
	}
}

// resolve settles the question once: its promise, the bootstrap client or
// the forwarded call's returner.
func (q *question) resolve(content capnp.Ptr, err error) {
	c := q.c
	c.mu.Lock()
	if q.settled {
		c.mu.Unlock()
		return
	}
	q.settled = true
	stop := q.stopCancel
	q.stopCancel = Watch{}
	c.mu.Unlock()
	stop.Stop()
	if q.direct != nil {
		q.direct.settle(content, err)
		return
	}
	q.p.Resolve(content, err)
	if q.boot != nil {
		if err != nil {
			q.boot.Reject(err)
		} else if cl := content.Interface().Client(); cl.IsValid() {
			q.boot.Fulfill(cl)
		} else {
			q.boot.Reject(exc.New(exc.Failed, "", "bootstrap returned no capability"))
		}
	}
	if q.fwd != nil {
		if err == nil {
			res, aerr := q.fwd.AllocResults(content.Struct().Size())
			if aerr == nil {
				aerr = res.CopyFrom(content.Struct())
			}
			err = aerr
		}
		q.fwd.PrepareReturn(err)
		q.fwd.Return()
		q.fwd.ReleaseResults()
		q.release()
	}
}

func (q *question) PipelineSend(ctx context.Context, transform []capnp.PipelineOp, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	nq, redirect, err := q.c.startCall(ctx, callTarget{q: q, transform: transform}, s.Method, s.PlaceArgs, s.ArgsSize, nil)
	if redirect != nil {
		defer redirect.Release()
		return redirect.SendCall(ctx, s)
	}
	if err != nil {
		return capnp.ErrorAnswer(s.Method, err), func() {}
	}
	return nq.p.Answer(), nq.release
}

func (q *question) PipelineRecv(ctx context.Context, transform []capnp.PipelineOp, r capnp.Recv) capnp.PipelineCaller {
	return q.c.forward(ctx, callTarget{q: q, transform: transform}, r)
}

// finish sends q's Finish, then frees its id if it has returned: only
// then may the id be used again.
func (c *Conn) finish(q *question, releaseResultCaps bool) {
	c.sendFinish(q.id, releaseResultCaps)
	c.mu.Lock()
	q.finishSent = true
	c.freeQuestionLocked(q)
	c.mu.Unlock()
}

// sendFinish tells the peer this side is done with question id.
// One Finish message per connection is built once and reused (one per
// call otherwise: a Message, a buffer from go-capnp's pool and its
// zeroing, about a third of sendFinish's cost); the codec copies what it
// encodes, so the message is free again when send returns.
func (c *Conn) sendFinish(id uint32, releaseResultCaps bool) {
	c.finMu.Lock()
	defer c.finMu.Unlock()
	if c.finMsg == nil {
		msg, m, err := newMessage()
		if err != nil {
			return
		}
		fin, err := m.NewFinish()
		if err != nil {
			msg.Release()
			return
		}
		c.finMsg, c.fin = msg, fin
	}
	c.fin.SetQuestionId(id)
	c.fin.SetReleaseResultCaps(releaseResultCaps)
	_ = c.send(c.finMsg)
}

// handleReturn settles a question.
func (c *Conn) handleReturn(msg *capnp.Message, m rpccp.Message) bool {
	ret, err := m.Return()
	if err != nil {
		msg.Release()
		c.abort("unreadable Return")
		return false
	}
	c.mu.Lock()
	q := c.questionLocked(ret.AnswerId())
	if q == nil || q.returned {
		c.mu.Unlock()
		msg.Release()
		c.abort("Return for an unknown question")
		return false
	}
	q.returned = true
	// The peer dropped its answer (results without capabilities): no
	// Finish, the id is free once the barrier below is passed. A
	// Bootstrap's Finish is sent anyway (the spec wants it).
	noFinish := ret.NoFinishNeeded() && q.boot == nil
	var paramExports []uint32
	if ret.ReleaseParamCaps() {
		paramExports, q.paramExports = q.paramExports, nil
	}
	if q.finished { // cancelled: the peer drops the results' capabilities
		c.freeQuestionLocked(q)
		c.mu.Unlock()
		msg.Release()
		c.releaseExports(paramExports)
		return true
	}
	var (
		content capnp.Ptr
		rerr    error
		local   []bool
	)
	switch ret.Which() {
	case rpccp.Return_Which_results:
		p, err := ret.Results()
		if err == nil {
			content, err = p.Content()
		}
		var list rpccp.CapDescriptor_List
		if err == nil {
			list, err = p.CapTable()
		}
		failed := 0
		if err == nil {
			local, failed, err = c.importCapsLocked(msg, list)
		}
		if err == errTooManyImports { // the question fails, the connection lives
			c.mu.Unlock()
			c.limit(LimitImports)
			c.refuseImports(list, failed)
			msg.CapTable().Reset()
			c.mu.Lock()
			content, local, rerr = capnp.Ptr{}, nil, err
			err = nil
		}
		if err != nil {
			c.mu.Unlock()
			msg.Release()
			c.abort("bad Return: " + err.Error())
			return false
		}
	case rpccp.Return_Which_exception:
		e, err := ret.Exception()
		if err != nil {
			rerr = exc.New(exc.Failed, "", "unreadable exception")
		} else {
			rerr = exceptionError(e)
		}
	case rpccp.Return_Which_canceled:
		rerr = exc.New(exc.Failed, "", "call canceled")
	default:
		rerr = errResultsKind
	}
	pipelined := q.pipelined
	q.pipelined = nil
	var embs []pathEmbargo
	if local != nil && len(pipelined) > 0 {
		embs = c.embargoResultsLocked(msg, content, local, pipelined)
	}
	c.mu.Unlock()
	c.releaseExports(paramExports)

	if len(pipelined) > 0 {
		c.barrier()
	}
	for _, e := range embs {
		c.sendDisembargoAnswer(e.id, q.id, e.path)
	}
	q.resolve(content, rerr)

	c.mu.Lock()
	q.finished = true
	keep := !q.released
	if keep {
		q.results = msg
	}
	if noFinish {
		q.finishSent = true
		c.freeQuestionLocked(q)
	}
	c.mu.Unlock()
	if !noFinish {
		c.finish(q, false)
	}
	if !keep {
		msg.Release()
	}
	return true
}

// describeParamsUnlock describes the capabilities of q's params (q is in
// the table) and unlocks c.mu. Over MaxExports q is freed, the exports
// made so far are released and OnLimit is told.
func (c *Conn) describeParamsUnlock(q *question, params rpccp.Payload, caps []outCap) error {
	var err error
	q.paramExports, err = c.describeLocked(params, caps)
	if err != nil {
		q.returned, q.finished, q.finishSent = true, true, true
		c.freeQuestionLocked(q)
		exps := q.paramExports
		c.mu.Unlock()
		if err == errTooManyExports {
			c.limit(LimitExports)
		}
		c.releaseExports(exps)
		return err
	}
	c.mu.Unlock()
	return nil
}
