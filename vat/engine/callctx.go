package engine

import (
	"context"
	"sync"
	"time"
)

// callCtx is the context of an inbound call: the one its target's RecvCall
// gets (or a Restore), cancelled by the peer's Finish, when the answer is
// dropped, at shutdown, and when the connection's base context ends
// (watchBase). It lives in the answer, so a call allocates no context of
// its own, and it is no child of the connection's context: a call takes
// and cancels it without the lock every call of the connection would
// share. Value and Deadline are the connection's context's; Err is
// context.Canceled once cancelled, and context.Cause says the same, or the
// cause of the connection's context if that ended.
//
// Its Done channel is made by the first Done. It has the AfterFunc method
// package context looks for (context.AfterFunc and context.WithCancel on
// it register with it, no goroutine); code that holds it wrapped
// (context.WithValue) uses AfterCancel for that. It is never reused: a
// handler may keep it after its answer is gone.
type callCtx struct {
	c *Conn // set with the answer; its ctx has the values

	mu sync.Mutex // a leaf: nothing is called with it held
	lk struct {   // guarded by mu
		canceled bool
		err      error         // Err once canceled: context.Canceled, or the base context's error
		done     chan struct{} // nil until Done asks
		fns      []afterFn     // registered, not stopped; nil entries are free
		inline   [1]afterFn    // fns's first array: one registration allocates nothing
		nextID   uint64
	}
}

// afterFn is a function to run when a callCtx is cancelled.
type afterFn struct {
	id    uint64 // never 0
	f     func()
	async bool // run on a goroutine of its own (AfterCancel's contract)
}

// callCtxKey finds the callCtx under wrapping contexts (AfterCancel).
type callCtxKey struct{}

// closedChan is the Done channel of a callCtx cancelled before anyone
// asked for one.
var closedChan = func() chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}()

func (cc *callCtx) Deadline() (time.Time, bool) { return cc.c.ctx.Deadline() }

func (cc *callCtx) Done() <-chan struct{} {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.lk.done == nil {
		if cc.lk.canceled {
			return closedChan
		}
		cc.lk.done = make(chan struct{})
	}
	return cc.lk.done
}

func (cc *callCtx) Err() error {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.lk.err
}

func (cc *callCtx) Value(key any) any {
	if _, ok := key.(callCtxKey); ok {
		return cc
	}
	return cc.c.ctx.Value(key)
}

func (cc *callCtx) String() string { return "engine.callCtx" }

// AfterFunc registers f to run, on the goroutine that cancels cc, once cc
// is cancelled (on a goroutine of its own, at once, if it is); stop
// unregisters it and reports whether that kept f from running. Package
// context calls it for context.AfterFunc and for children of cc (its
// afterFuncer interface), holding the child's lock, which its f takes: f
// must not run on the caller's goroutine.
func (cc *callCtx) AfterFunc(f func()) (stop func() bool) {
	id, ok := cc.register(f, false)
	if !ok {
		go f()
		return func() bool { return false }
	}
	return func() bool { return cc.unregister(id) }
}

// register adds f unless cc is cancelled (then ok is false).
func (cc *callCtx) register(f func(), async bool) (id uint64, ok bool) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.lk.canceled {
		return 0, false
	}
	cc.lk.nextID++
	e := afterFn{id: cc.lk.nextID, f: f, async: async}
	if cc.lk.fns == nil {
		cc.lk.fns = cc.lk.inline[:0]
	}
	for i := range cc.lk.fns {
		if cc.lk.fns[i].f == nil {
			cc.lk.fns[i] = e
			return e.id, true
		}
	}
	cc.lk.fns = append(cc.lk.fns, e)
	return e.id, true
}

// unregister removes the function registered as id and reports whether
// it was still to run.
func (cc *callCtx) unregister(id uint64) bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	for i := range cc.lk.fns {
		if cc.lk.fns[i].id == id {
			cc.lk.fns[i] = afterFn{}
			return true
		}
	}
	return false
}

// cancel cancels cc once with context.Canceled: Done closes, then the
// registered functions run. No lock of the Conn may be held: they may call
// into it.
func (cc *callCtx) cancel() { cc.cancelWith(context.Canceled) }

// cancelWith is cancel with err as Err (the base context's, when it ended).
func (cc *callCtx) cancelWith(err error) {
	cc.mu.Lock()
	if cc.lk.canceled {
		cc.mu.Unlock()
		return
	}
	cc.lk.canceled, cc.lk.err = true, err
	if cc.lk.done != nil {
		close(cc.lk.done)
	}
	fns := cc.lk.fns
	cc.lk.fns = nil
	cc.mu.Unlock()
	for i := range fns {
		switch e := fns[i]; {
		case e.f == nil:
		case e.async:
			go e.f()
		default:
			e.f()
		}
		fns[i] = afterFn{}
	}
}

// Watch is a registration of AfterCancel. The zero Watch stops nothing.
type Watch struct {
	cc   *callCtx
	id   uint64
	stop func() bool // context.AfterFunc's, for any other context
}

// Stop unregisters the function, as the stop function of context.AfterFunc
// does: it reports whether that kept the function from running.
func (w Watch) Stop() bool {
	switch {
	case w.cc != nil:
		return w.cc.unregister(w.id)
	case w.stop != nil:
		return w.stop()
	}
	return false
}

// AfterCancel is context.AfterFunc(ctx, f) that costs an inbound call's
// context no allocation: f runs on a goroutine of its own once ctx is
// cancelled (at once if it is), unless Watch.Stop comes first. ctx may be
// the context the engine gave a call's target or Restore, or one made from
// it by values (a ValueContext, seen through without making the call
// context's Done channel; context.WithValue, or a type embedding it,
// found by comparing Done channels): context.AfterFunc would start a
// goroutine to watch such a context for as long as the call runs, since it
// cannot see through the wrapper. Any other context gets
// context.AfterFunc.
func AfterCancel(ctx context.Context, f func()) Watch {
	inner := ctx
	for {
		v, ok := inner.(ValueContext)
		if !ok {
			break
		}
		inner = v.ValueParent()
	}
	if cc, ok := inner.(*callCtx); ok { // no Done channel asked for
		return cc.afterCancel(f)
	}
	if cc, ok := ctx.Value(callCtxKey{}).(*callCtx); ok && ctx.Done() == cc.Done() {
		// The Done check: a cancellable context between ctx and cc
		// would end ctx first.
		return cc.afterCancel(f)
	}
	return Watch{stop: context.AfterFunc(ctx, f)}
}

// afterCancel is AfterCancel on cc itself.
func (cc *callCtx) afterCancel(f func()) Watch {
	if id, ok := cc.register(f, true); ok {
		return Watch{cc: cc, id: id}
	}
	go f()
	return Watch{}
}

// ValueContext is a context that wraps another and adds values only: its
// Done, Err and Deadline are the wrapped context's. AfterCancel sees
// through it to an inbound call's context without making the call
// context's Done channel (which comparing Done channels would: an
// allocation on a call that needs none otherwise). The vat's wrapper that
// names a call's caller is one. A type that embeds a ValueContext inherits
// ValueParent: it must not then give Done or Err of its own, or
// AfterCancel would register past its cancellation.
type ValueContext interface {
	context.Context
	// ValueParent returns the wrapped context.
	ValueParent() context.Context
}

// watchBase cancels the calls running when the connection's context ends
// without a shutdown (its BaseContext ended); shutdown cancels them
// itself. An answer entered later sees c.ctx ended (handleCall,
// handleBootstrap). Their Err is the base context's (DeadlineExceeded for a
// deadline), as when they were its children.
func (c *Conn) watchBase() {
	c.mu.Lock()
	as := make([]*answer, 0, len(c.answers))
	for _, a := range c.answers {
		as = append(as, a)
	}
	c.mu.Unlock()
	err := c.ctx.Err()
	for _, a := range as {
		a.ctx.cancelWith(err)
	}
}
