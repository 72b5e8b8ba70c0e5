package engine

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type valueKey struct{}

func newCallCtx() *callCtx {
	return &callCtx{c: &Conn{ctx: context.Background()}}
}

// waitClosed fails t unless ch closes within a generous time.
func waitClosed(t *testing.T, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// TestAfterCancelRegisters: AfterCancel on a call's context, bare or
// wrapped by values, registers with it (no allocation, no goroutine); with
// a cancellable context in between it is context.AfterFunc on that one.
func TestAfterCancelRegisters(t *testing.T) {
	cc := newCallCtx()
	wrapped := context.WithValue(cc, valueKey{}, 1)
	f := func() {}
	for name, ctx := range map[string]context.Context{"bare": cc, "wrapped": wrapped} {
		if w := AfterCancel(ctx, f); w.cc != cc || !w.Stop() {
			t.Errorf("%s: AfterCancel did not register with the call's context", name)
		}
		if n := testing.AllocsPerRun(100, func() { AfterCancel(ctx, f).Stop() }); n != 0 {
			t.Errorf("%s: AfterCancel and Stop allocate %v times, want 0", name, n)
		}
	}

	// Through a ValueContext the call's context makes no Done channel.
	fresh := newCallCtx()
	var through context.Context = &valueOnly{&valueOnly{fresh}}
	if w := AfterCancel(through, f); w.cc != fresh || !w.Stop() {
		t.Error("AfterCancel through ValueContexts did not register with the call's context")
	}
	fresh.mu.Lock()
	made := fresh.lk.done != nil
	fresh.mu.Unlock()
	if made {
		t.Error("AfterCancel through a ValueContext made the call context's Done channel")
	}
	if n := testing.AllocsPerRun(100, func() { AfterCancel(through, f).Stop() }); n != 0 {
		t.Errorf("through ValueContexts: AfterCancel and Stop allocate %v times, want 0", n)
	}
	ran0 := make(chan struct{})
	AfterCancel(through, func() { close(ran0) })
	fresh.cancel()
	waitClosed(t, "a function registered through ValueContexts", ran0)

	// A cancellable context between ValueContexts stops the walk: the
	// registration is the child's, and the child's cancel runs it.
	base := newCallCtx()
	mid, cancelMid := context.WithCancel(&valueOnly{base})
	ranMid := make(chan struct{})
	if w := AfterCancel(&valueOnly{mid}, func() { close(ranMid) }); w.cc != nil {
		t.Error("AfterCancel registered with the call's context past a cancellable context between ValueContexts")
	}
	cancelMid()
	waitClosed(t, "the function registered past a cancellable context", ranMid)
	if base.Err() != nil {
		t.Errorf("the call's context ended with a child: %v", base.Err())
	}

	child, cancelChild := context.WithCancel(wrapped)
	ran := make(chan struct{})
	w := AfterCancel(context.WithValue(child, valueKey{}, 2), func() { close(ran) })
	if w.cc != nil {
		t.Fatal("AfterCancel registered with the call's context past a cancellable child")
	}
	cancelChild() // the child alone ends
	waitClosed(t, "the function registered on the child", ran)
	if cc.Err() != nil {
		t.Errorf("the call's context ended with its child: %v", cc.Err())
	}
}

// TestCallCtxCancel: cancel closes Done (made before or after), runs each
// registered function once (AfterCancel's on a goroutine of their own)
// and none that was stopped; registrations after it run at once.
func TestCallCtxCancel(t *testing.T) {
	cc := newCallCtx()
	done := cc.Done()
	var direct, stopped atomic.Int32
	async := make(chan struct{})
	stopAfterFunc := cc.AfterFunc(func() { direct.Add(1) })
	w := AfterCancel(cc, func() { close(async) })
	if !AfterCancel(cc, func() { stopped.Add(1) }).Stop() {
		t.Error("Stop before cancel = false, want true")
	}
	cc.cancel()
	cc.cancel()
	waitClosed(t, "Done", done)
	waitClosed(t, "AfterCancel's function", async)
	if got := direct.Load(); got != 1 {
		t.Errorf("AfterFunc's function ran %d times, want once", got)
	}
	if stopped.Load() != 0 {
		t.Error("a stopped function ran")
	}
	if stopAfterFunc() || w.Stop() {
		t.Error("Stop after cancel = true, want false")
	}
	if cc.Err() != context.Canceled || context.Cause(cc) != context.Canceled {
		t.Errorf("Err, Cause = %v, %v; want %v", cc.Err(), context.Cause(cc), context.Canceled)
	}
	late := make(chan struct{})
	if AfterCancel(cc, func() { close(late) }).Stop() {
		t.Error("Stop of a registration after cancel = true, want false")
	}
	waitClosed(t, "a registration after cancel", late)
	ran := make(chan struct{})
	cc.AfterFunc(func() { direct.Add(1); close(ran) })
	waitClosed(t, "AfterFunc after cancel", ran)
	if got := direct.Load(); got != 2 {
		t.Errorf("AfterFunc after cancel: ran %d times in all, want 2", got-1)
	}

	fresh := newCallCtx()
	fresh.cancel()
	waitClosed(t, "Done asked after cancel", fresh.Done())
}

// TestCallCtxConcurrent: registrations, stops and the cancel race; each
// function runs at most once, never after its Stop said true, and every
// one not stopped runs.
func TestCallCtxConcurrent(t *testing.T) {
	const n = 64
	for round := 0; round < 20; round++ {
		cc := newCallCtx()
		wrapped := context.WithValue(cc, valueKey{}, round)
		var runs [n]atomic.Int32
		var stoppedOK [n]bool
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				w := AfterCancel(wrapped, func() { runs[i].Add(1) })
				if i%2 == 0 {
					stoppedOK[i] = w.Stop()
				}
			}()
		}
		cc.cancel()
		wg.Wait()
		for i := range n {
			want := int32(1)
			if stoppedOK[i] {
				want = 0
			}
			deadline := time.Now().Add(30 * time.Second)
			for runs[i].Load() != want && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			if got := runs[i].Load(); got != want {
				t.Fatalf("round %d: function %d ran %d times, want %d (stopped: %v)", round, i, got, want, stoppedOK[i])
			}
		}
	}
}

// lateDone is a callCtx whose Done is still open: it holds open the window
// in package context's propagateCancel between its look at the parent's
// Done and its call of the parent's AfterFunc, in which the call's context
// may be cancelled.
type lateDone struct {
	*callCtx
	open chan struct{}
}

func (l lateDone) Done() <-chan struct{} { return l.open }

// TestCallCtxAfterFuncAfterCancelDoesNotDeadlock: a child made of a call's
// context cancelled in that window is cancelled, without deadlock: package
// context calls AfterFunc holding the child's lock, which the function it
// passes takes, so AfterFunc on a cancelled callCtx runs it on a goroutine
// of its own (found by review: it ran it in place and hung).
func TestCallCtxAfterFuncAfterCancelDoesNotDeadlock(t *testing.T) {
	cc := newCallCtx()
	cc.cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		child, cancel := context.WithCancel(lateDone{cc, make(chan struct{})})
		defer cancel()
		<-child.Done()
	}()
	waitClosed(t, "the child of a cancelled call context to be cancelled", done)
}

// valueOnly wraps a context as a ValueContext.
type valueOnly struct{ context.Context }

func (v *valueOnly) ValueParent() context.Context { return v.Context }
