package vat

import (
	"context"
	"sync"
	"sync/atomic"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"

	"github.com/vatcar/vatcar/vat/engine"
)

// forwarder is a capability that passes calls on to a target until it is
// revoked, counting the ones that arrive over a connection against that
// connection's limiter (if any). The Table hands out one per restore so
// that Remove can revoke them; the bootstrap wraps what it restores in one
// bound to the connection's limiter.
//
// Locking: mu guards target, err and dispatching. A call borrows the target
// under mu (dispatching++), hands the call to it after unlocking, and gives
// it back under mu; the target is released once revoked and not borrowed.
// (Borrowing instead of AddRef keeps the per-call cost down.)
type forwarder struct {
	mu          sync.Mutex
	target      capnp.Client // owned
	err         error        // why calls fail, once revoked
	dispatching int          // calls being handed to target right now
	limit       *limiter     // nil: no limit
	onShut      func()       // called once at shutdown; may be nil
	grant       *Grant       // attached to every call's context; nil: none (immutable)
}

func newForwarder(target capnp.Client, limit *limiter, onShut func()) (*forwarder, capnp.Client) {
	f := &forwarder{target: target, limit: limit, onShut: onShut}
	return f, capnp.NewClient(f)
}

// withGrant adds f's grant to a call's context.
func (f *forwarder) withGrant(ctx context.Context) context.Context {
	if f.grant == nil {
		return ctx
	}
	return &callerContext{Context: ctx, grant: f.grant}
}

// revoke makes every later call fail with err and drops the target.
func (f *forwarder) revoke(err error) {
	f.mu.Lock()
	if f.err == nil {
		f.err = err
	}
	t := f.takeTargetLocked()
	f.mu.Unlock()
	t.Release()
}

// takeTargetLocked returns the target for release if it is revoked and no
// call is using it. f.mu is held.
func (f *forwarder) takeTargetLocked() capnp.Client {
	if f.err == nil || f.dispatching > 0 {
		return capnp.Client{}
	}
	t := f.target
	f.target = capnp.Client{}
	return t
}

// borrow returns the target for one dispatch, or the error calls fail with.
func (f *forwarder) borrow() (capnp.Client, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return capnp.Client{}, f.err
	}
	f.dispatching++
	return f.target, nil
}

// giveBack ends a dispatch started by borrow.
func (f *forwarder) giveBack() {
	f.mu.Lock()
	f.dispatching--
	t := f.takeTargetLocked()
	f.mu.Unlock()
	t.Release()
}

func (f *forwarder) Send(ctx context.Context, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	t, err := f.borrow()
	if err != nil {
		return capnp.ErrorAnswer(s.Method, err), func() {}
	}
	defer f.giveBack()
	return t.SendCall(f.withGrant(ctx), s)
}

func (f *forwarder) Recv(ctx context.Context, r capnp.Recv) capnp.PipelineCaller {
	t, err := f.borrow()
	if err != nil {
		r.Reject(err)
		return nil
	}
	defer f.giveBack()
	if f.limit != nil {
		if !f.limit.acquire() {
			r.Reject(exc.New(exc.Overloaded, "", ErrOverloaded.Error()))
			return nil
		}
		lc := &limitedCall{
			ret: limitedReturner{Returner: r.Returner, limit: f.limit},
			ctx: callerContext{Context: ctx, limit: f.limit, grant: f.grant},
		}
		r.Returner = &lc.ret
		return t.RecvCall(&lc.ctx, r)
	}
	return t.RecvCall(f.withGrant(ctx), r)
}

// callerKey is the context key of CallerOf's value.
type callerKey struct{}

// limitedCall is what a call counted against a limiter needs, in one
// allocation instead of two (three with a grant): the Returner that gives
// its slot back and the context that names its caller and carries the
// grant.
type limitedCall struct {
	ret limitedReturner
	ctx callerContext
}

// callerContext is a call's context carrying CallerOf's value and the
// forwarder's grant, each if set: what context.WithValue(ctx, callerKey{},
// limit) and context.WithValue(ctx, grantKey{}, grant) would give, in one
// value that engine.AfterCancel sees through (engine.ValueContext).
type callerContext struct {
	context.Context
	limit *limiter // nil: none
	grant *Grant   // nil: none
}

func (c *callerContext) Value(key any) any {
	switch key.(type) {
	case callerKey:
		if c.limit != nil {
			return c.limit
		}
	case grantKey:
		if c.grant != nil {
			return c.grant
		}
	}
	return c.Context.Value(key)
}

// ValueParent makes c an engine.ValueContext: it adds values only.
func (c *callerContext) ValueParent() context.Context { return c.Context }

var _ engine.ValueContext = (*callerContext)(nil)

// AfterFunc is the method package context looks for on a parent it does
// not know: a context derived from c (context.WithCancel, AfterFunc)
// registers with the call's context under it, as it would with c's
// parent. The engine's call contexts are no cancelCtx, which package
// context would otherwise watch with a goroutine for each derived context.
func (c *callerContext) AfterFunc(f func()) (stop func() bool) {
	if a, ok := c.Context.(interface{ AfterFunc(func()) func() bool }); ok {
		return a.AfterFunc(f)
	}
	return engine.AfterCancel(c.Context, f).Stop
}

// CallerOf returns a comparable value that names the connection a call
// arrived on, from the context a capability's server gets for a call on a
// capability this vat restored for a peer; nil for any other call. Values
// are equal exactly for calls that came over one connection, and carry
// nothing of the peer's identity. The bridge's egress counts calls per
// caller with it (bridge.EgressConfig.CallerKey).
func CallerOf(ctx context.Context) any {
	if l, ok := ctx.Value(callerKey{}).(*limiter); ok {
		return l
	}
	return nil
}

func (f *forwarder) Brand() capnp.Brand { return capnp.Brand{} }

func (f *forwarder) Shutdown() {
	f.revoke(ErrRevoked)
	if f.onShut != nil {
		f.onShut()
	}
}

func (f *forwarder) String() string { return "vat.forwarder" }

// limiter bounds the calls running at once on one connection. A nil
// *limiter means no limit.
//
// A call holds a slot while it runs and gives it back just before its
// Return is sent, so that a caller who has the results may call again at
// once. Sending may wait (the codec queues at most 4 MiB for a peer that
// reads nothing), so a call that gave its slot back is counted as
// returning until its Return is queued, and running plus returning is
// bounded too (2*max): without that, a peer that never reads could start
// calls without end, each parked on the full queue with its goroutine and
// messages. Once both are spent, calls are refused from the reading
// goroutine, whose refusal waits on the same queue, so the vat stops
// reading that peer.
//
// Both fields are atomics; no lock.
type limiter struct {
	max       int64
	running   atomic.Int64 // calls holding a slot
	returning atomic.Int64 // calls that gave theirs back, Return not yet queued
}

func newLimiter(max int) *limiter {
	if max < 0 {
		return &limiter{max: -1}
	}
	return &limiter{max: int64(max)}
}

func (l *limiter) acquire() bool {
	n := l.running.Add(1)
	if l.max >= 0 && (n > l.max || n+l.returning.Load() > 2*l.max) {
		l.running.Add(-1)
		return false
	}
	return true
}

// startReturn moves a call from running to returning; endReturn ends it.
func (l *limiter) startReturn() {
	l.returning.Add(1)
	l.running.Add(-1)
}

func (l *limiter) endReturn() { l.returning.Add(-1) }

// release gives a slot back at once (a restore's: see engine_conn.go).
func (l *limiter) release() { l.running.Add(-1) }

// wrap returns c behind a forwarder bound to l, taking over c.
func (l *limiter) wrap(c capnp.Client) capnp.Client {
	_, fc := newForwarder(c, l, nil)
	return fc
}

// limitedReturner gives the call's slot back when the call returns: before
// the Return is sent, so that a caller who has the results can call again
// at once (after it, a restore's slot could still be held when the
// restored capability's first calls came: TestConcurrencyLimitOverloaded
// saw one of its two held calls refused under a limit of two). Until the
// Return is queued the call counts as returning (see limiter).
type limitedReturner struct {
	capnp.Returner
	limit    *limiter
	returned atomic.Bool // the first Return moved the call to returning
}

func (r *limitedReturner) Return() {
	if r.returned.Swap(true) {
		r.Returner.Return()
		return
	}
	r.limit.startReturn()
	r.Returner.Return()
	r.limit.endReturn()
}
