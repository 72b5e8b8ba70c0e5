package engine

import (
	"context"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	"capnproto.org/go/capnp/v3/flowcontrol"
)

// CallDirect is the engine's own blocking call API, for a caller that
// makes a call and waits for its results, as the bridge's unary path does.
//
// When client is a plain import of an engine connection (a settled,
// non-promise import, or a promise that has resolved to one, such as a
// restored bootstrap), the call is made here without go-capnp's call
// machinery: no capnp.Promise, Answer or Future, no flow-limiter hook, no
// context.AfterFunc. It is the same question as a normal call's (an id
// from the question table, reused once the Return came and the Finish went
// out, or at once if the Return says noFinishNeeded; MaxImports, the size
// hint and ConnStats as ever; the results' cap table filled as the normal
// path fills it, so capabilities in them work),
// and it blocks until the Return. If ctx ends first, the peer gets the
// Finish that cancels, the call fails with ctx's error, as a normal call
// does when its context ends. Errors carry the method's name as a
// Future's do.
//
// Any other client (a local capability, a promise not yet resolved, a
// promise import, a client with a flow limiter) takes the normal path:
// client.SendCall, then a wait on the answer, with sizeHint (if positive)
// given to the engine as WithSizeHint does. Calls on a plain import are
// never queued on this side, so a direct call is ordered after every call
// sent before it to the same capability, as a normal call is; calls
// pipelined on a promise are ordered by the normal path, which promises
// always take.
//
// place fills the params (sz big); with a sizeHint it may run twice (see
// WithSizeHint). The caller releases the Results. Unlike SendCall,
// CallDirect does not report a failed earlier streaming call on client:
// use it on interfaces without "-> stream" methods.
func CallDirect(ctx context.Context, client capnp.Client, m capnp.Method, sz capnp.ObjectSize, place func(capnp.Struct) error, sizeHint int) (Results, error) {
	if h, snap := directImport(client); h != nil {
		d, err := h.c.startDirect(h, m, sz, place, sizeHint, nil, 0)
		snap.Release() // the question names the import: the hook may go
		if err != nil {
			return Results{}, exc.Annotate("", m.String(), err)
		}
		return d.wait(ctx, m)
	}
	if sizeHint > 0 {
		ctx = WithSizeHint(ctx, sizeHint)
	}
	ans, rel := client.SendCall(ctx, capnp.Send{Method: m, PlaceArgs: place, ArgsSize: sz})
	st, err := ans.Struct()
	if err != nil {
		rel()
		return Results{}, err
	}
	return Results{st: st, rel: rel}, nil
}

// SendDirect sends a call on client without waiting for its results, as a
// "-> stream" method's call is sent (capnp.Client.SendStreamCall), when
// client is a plain import as CallDirect takes it (a client with a flow
// limiter is not: the caller does its own flow control). It is the same
// question as CallDirect's: no capnp.Promise, Answer or Future, no
// context, and no goroutine of its own.
//
// ok reports whether the call took the direct path. If not, nothing was
// sent and done is never called: the caller sends the call the normal way.
// If ok and err is not nil, the call failed before it was sent (the
// connection had ended, place failed, a budget was exceeded) and done is
// never called either. Otherwise done(tag, err) runs exactly once: when the
// Return comes (err is nil, or the exception with the method's name, as a
// Future's), or when the connection ends before it (the connection's
// error). The results are released before done runs (the Finish goes out
// unless the Return said noFinishNeeded). tag is the caller's, passed to
// done as it is (the bridge's sender passes the bytes it counted for the
// call): one done function serves every call, with no closure per call.
//
// done runs on the connection's receive goroutine, or on the goroutine that
// ends the connection (Close, or the engine's own after a failure): it must
// not block. Calls sent by one goroutine to one import, by either path, go
// out in the order they were made; place fills the params (sz big) and
// with a sizeHint may run twice (see WithSizeHint).
//
// A caller that sends many calls on one client holds a DirectTarget
// instead.
func SendDirect(client capnp.Client, m capnp.Method, sz capnp.ObjectSize, place func(capnp.Struct) error, sizeHint int, done func(tag int, err error), tag int) (ok bool, err error) {
	t, ok := NewDirectTarget(client)
	if !ok {
		return false, nil
	}
	err = t.Send(m, sz, place, sizeHint, done, tag)
	t.Release()
	return true, err
}

// DirectTarget is a client's plain import as SendDirect takes it, held for
// many calls: SendDirect takes a snapshot of the client per call (an
// allocation) to find the import and keep it while the call is made, a
// DirectTarget once. The zero value holds nothing. A DirectTarget is not
// safe for concurrent use; one goroutine sends on it, in order.
type DirectTarget struct {
	h    *importClient
	snap capnp.ClientSnapshot // keeps h
}

// NewDirectTarget returns the import behind client, held until Release, if
// calls on client may take the direct path (see SendDirect); if not, ok is
// false and nothing is held (a promise may qualify once it has resolved).
// The caller must not give client a flow limiter while it holds the
// target, and releases the target when it is done with client: the
// import goes once both are released.
func NewDirectTarget(client capnp.Client) (t DirectTarget, ok bool) {
	h, snap := directImport(client)
	if h == nil {
		return DirectTarget{}, false
	}
	return DirectTarget{h: h, snap: snap}, true
}

// Valid reports whether t holds an import.
func (t DirectTarget) Valid() bool { return t.h != nil }

// Send is SendDirect on t's import, which always takes the direct path:
// if err is not nil, the call failed before it was sent and done is never
// called; otherwise done(tag, err) runs once, as SendDirect says.
func (t DirectTarget) Send(m capnp.Method, sz capnp.ObjectSize, place func(capnp.Struct) error, sizeHint int, done func(tag int, err error), tag int) error {
	if _, err := t.h.c.startDirect(t.h, m, sz, place, sizeHint, done, tag); err != nil {
		return exc.Annotate("", m.String(), err)
	}
	return nil
}

// Release lets go of the import (the client may still hold it). It may be
// called on the zero DirectTarget, and again.
func (t *DirectTarget) Release() {
	t.snap.Release()
	*t = DirectTarget{}
}

// Results are a CallDirect call's results, valid until Release.
type Results struct {
	st  capnp.Struct
	q   *question         // the direct path's question; nil on the normal path
	rel capnp.ReleaseFunc // the normal path's release
}

// Struct returns the results.
func (r Results) Struct() capnp.Struct { return r.st }

// Direct reports whether the call took the direct path.
func (r Results) Direct() bool { return r.q != nil }

// Release releases the results and the capabilities in them.
func (r Results) Release() {
	switch {
	case r.q != nil:
		r.q.release()
	case r.rel != nil:
		r.rel()
	}
}

// directImport returns the import hook behind client, with a snapshot that
// keeps it alive until released, if calls on client may take the direct
// path; otherwise nil.
func directImport(client capnp.Client) (*importClient, capnp.ClientSnapshot) {
	// A null or released client gives the zero snapshot, whose Brand is
	// no hook's. (Client.IsValid would cost a snapshot of its own.)
	snap := client.Snapshot() // follows a resolved promise to its resolution
	h, ok := snap.Brand().Value.(*importClient)
	if !ok || h.promise || client.GetFlowLimiter() != flowcontrol.NopLimiter {
		snap.Release()
		return nil, capnp.ClientSnapshot{}
	}
	return h, snap
}

// directCall is a CallDirect or SendDirect question and what its Return
// brought. For CallDirect, q.resolve sets content and err, then closes
// done; for SendDirect, it releases the question and calls sent.
type directCall struct {
	q       question
	done    chan struct{}
	sent    func(int, error) // SendDirect's done; nil for CallDirect
	tag     int              // SendDirect's tag, for sent
	content capnp.Ptr
	err     error
}

// settle is q.resolve's, once, without c.mu.
func (d *directCall) settle(content capnp.Ptr, err error) {
	if d.sent != nil {
		// handleReturn releases the Return message (q.released) and
		// sends the Finish if one is due.
		d.q.release()
		if err != nil {
			err = exc.Annotate("", d.q.method.String(), err)
		}
		d.sent(d.tag, err)
		return
	}
	d.content, d.err = content, err
	close(d.done)
}

// wait waits for the Return, or cancels the question if ctx ends first.
func (d *directCall) wait(ctx context.Context, m capnp.Method) (Results, error) {
	select {
	case <-d.done:
	case <-ctx.Done():
		// Sends the Finish and settles the question with ctx's error,
		// unless the Return came (or the connection ended) first: either
		// settles it too.
		d.q.cancel(ctx)
		<-d.done
	}
	if d.err != nil {
		d.q.release() // an exception's Return message is held until then
		return Results{}, exc.Annotate("", m.String(), d.err)
	}
	return Results{st: d.content.Struct(), q: &d.q}, nil
}

// startDirect sends a call to import h (not a promise) for CallDirect (sent
// nil) or SendDirect: what startCall does for such a target, with a
// directCall for the question.
func (c *Conn) startDirect(h *importClient, m capnp.Method, sz capnp.ObjectSize, place func(capnp.Struct) error, hint int, sent func(int, error), tag int) (*directCall, error) {
	sm, call, params, err := buildCall(hint, m, place, sz)
	if err != nil {
		return nil, err
	}
	defer sm.release()
	msg := sm.msg
	tgt, err := call.NewTarget()
	if err != nil {
		return nil, err
	}
	caps := c.classify(msg.CapTable())
	d := &directCall{sent: sent, tag: tag}
	if sent == nil {
		d.done = make(chan struct{})
	}
	q := &d.q
	q.c, q.method, q.direct = c, m, d

	c.mu.Lock()
	if c.closed {
		err := c.closedErrLocked()
		c.mu.Unlock()
		return nil, err
	}
	tgt.SetImportedCap(h.id)
	c.newQuestionLocked(q)
	call.SetQuestionId(q.id)
	if err := c.describeParamsUnlock(q, params, caps); err != nil {
		return nil, err
	}

	_ = c.send(msg) // a failure ends the connection, which fails q
	return d, nil
}
