package vat

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/vatcar/vatcar/proto/captp"
	"github.com/vatcar/vatcar/vat/engine"
)

// TestCallerContext: a callerContext carries CallerOf's value, passes the
// others through, and is a child of its parent as context.WithValue's
// would be: a context derived from it is cancelled with the parent at
// once (the context package recognises the parent's cancelCtx instead of
// starting a goroutine to watch a Done it does not know).
func TestCallerContext(t *testing.T) {
	g := &Grant{}
	parent, cancel := context.WithCancel(context.WithValue(context.Background(), grantKey{}, g))
	l := newLimiter(1)
	lc := &limitedCall{ctx: callerContext{Context: parent, limit: l}}
	ctx := context.Context(&lc.ctx)
	if got := CallerOf(ctx); got != any(l) {
		t.Errorf("CallerOf = %v, want the limiter", got)
	}
	if got, ok := GrantFromContext(ctx); !ok || got != g {
		t.Errorf("GrantFromContext = %v, %v; want the parent's grant", got, ok)
	}
	if CallerOf(parent) != nil {
		t.Error("CallerOf(parent) is set")
	}
	child, stop := context.WithCancel(ctx)
	defer stop()
	cancel()
	select {
	case <-child.Done():
	default:
		t.Fatal("a context derived from a callerContext was not cancelled with its parent at once")
	}
	if ctx.Err() != context.Canceled {
		t.Errorf("Err() = %v after the parent's cancel", ctx.Err())
	}
}

// TestCallerContextValues: a callerContext carries a grant, a limiter or
// both (the forwarder's one wrapper per call), passes the rest through,
// and never reports a value it does not have (CallerOf is nil without a
// limiter, not a nil *limiter); it is an engine.ValueContext whose parent
// is the call's context.
func TestCallerContextValues(t *testing.T) {
	outer, inner := &Grant{}, &Grant{}
	parent := context.WithValue(context.Background(), grantKey{}, outer)
	l := newLimiter(1)
	for _, tc := range []struct {
		name  string
		c     *callerContext
		limit any
		grant *Grant
	}{
		{"grant", &callerContext{Context: parent, grant: inner}, nil, inner},
		{"limit", &callerContext{Context: parent, limit: l}, l, outer},
		{"both", &callerContext{Context: parent, limit: l, grant: inner}, l, inner},
	} {
		if got := CallerOf(tc.c); got != tc.limit {
			t.Errorf("%s: CallerOf = %v, want %v", tc.name, got, tc.limit)
		}
		if got, ok := GrantFromContext(tc.c); !ok || got != tc.grant {
			t.Errorf("%s: GrantFromContext = %p, %v; want %p", tc.name, got, ok, tc.grant)
		}
		if tc.c.ValueParent() != parent {
			t.Errorf("%s: ValueParent is not the wrapped context", tc.name)
		}
	}
}

// TestLimiterCountsReturningCalls: a call that gave its slot back before
// its Return is queued frees the slot for the next call, but calls
// running and returning together stay within twice the limit, so calls
// parked on a full send queue cannot grow without end.
func TestLimiterCountsReturningCalls(t *testing.T) {
	l := newLimiter(2)
	for i := range 2 {
		if !l.acquire() {
			t.Fatalf("call %d refused under a limit of two", i)
		}
	}
	if l.acquire() {
		t.Fatal("a third running call admitted under a limit of two")
	}
	l.startReturn()
	l.startReturn()
	for i := range 2 {
		if !l.acquire() {
			t.Fatalf("call %d refused while the two before it were returning", i)
		}
	}
	if l.acquire() {
		t.Fatal("a fifth call admitted with two running and two returning")
	}
	l.startReturn()
	if l.acquire() {
		t.Fatal("a call admitted with one running and three returning")
	}
	l.endReturn()
	if !l.acquire() {
		t.Fatal("a call refused with one running and two returning")
	}
	if got := l.running.Load() + l.returning.Load(); got != 4 {
		t.Errorf("running+returning = %d, want 4", got)
	}

	// A limitedReturner counts its call as returning only while the
	// Return is being sent, once however often Return is called.
	free := newLimiter(1)
	if !free.acquire() {
		t.Fatal("refused under an empty limiter")
	}
	var during int64
	r := &limitedReturner{Returner: returnerFunc(func() { during = max(during, free.returning.Load()) }), limit: free}
	r.Return()
	r.Return()
	if during != 1 || free.running.Load() != 0 || free.returning.Load() != 0 {
		t.Errorf("returning %d while sending, then running %d, returning %d; want 1, 0, 0", during, free.running.Load(), free.returning.Load())
	}
}

// returnerFunc is a capnp.Returner whose Return runs f.
type returnerFunc func()

func (f returnerFunc) AllocResults(capnp.ObjectSize) (capnp.Struct, error) {
	return capnp.Struct{}, nil
}
func (f returnerFunc) PrepareReturn(error) {}
func (f returnerFunc) Return()             { f() }
func (f returnerFunc) ReleaseResults()     {}

// ctxGrabber is a GrpcService whose unary calls hand their context to the
// test and wait for it to end.
type ctxGrabber struct{ got chan context.Context }

func (g *ctxGrabber) Unary(ctx context.Context, call captp.GrpcService_unary) error {
	call.Go()
	g.got <- ctx
	<-ctx.Done()
	return ctx.Err()
}

func (g *ctxGrabber) Open(context.Context, captp.GrpcService_open) error {
	return errors.New("not implemented")
}

// TestCallerContextOverEngine: over the engine, whose call contexts are no
// cancelCtx, contexts derived from a callerContext still cost no watcher
// goroutine each, and end with the call.
func TestCallerContextOverEngine(t *testing.T) {
	g := &ctxGrabber{got: make(chan context.Context, 1)}
	a, b := tcpPair(t)
	server := engine.NewConn(engine.NewStreamCodec(b, 0), &engine.Options{Bootstrap: capnp.Client(captp.GrpcService_ServerToClient(g))})
	defer server.Close()
	client := engine.NewConn(engine.NewStreamCodec(a, 0), nil)
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svc := captp.GrpcService(client.Bootstrap(ctx))
	defer svc.Release()
	callCtx, endCall := context.WithCancel(ctx)
	defer endCall()
	_, release := svc.Unary(callCtx, nil)
	defer release()
	var handlerCtx context.Context
	select {
	case handlerCtx = <-g.got:
	case <-ctx.Done():
		t.Fatal("the call did not start")
	}

	const n = 200
	before := runtime.NumGoroutine()
	children := make([]context.Context, n)
	fired := make(chan struct{}, n)
	for i := range children {
		lc := &limitedCall{ctx: callerContext{Context: handlerCtx, limit: newLimiter(1)}}
		var stop context.CancelFunc
		children[i], stop = context.WithCancel(&lc.ctx)
		defer stop()
		context.AfterFunc(&lc.ctx, func() { fired <- struct{}{} })
	}
	if grew := runtime.NumGoroutine() - before; grew >= n/2 {
		t.Fatalf("%d goroutines more for %d derived contexts: they are watched one by one", grew, n)
	}
	endCall() // the Finish cancels the call's context
	for i, child := range children {
		select {
		case <-child.Done():
		case <-ctx.Done():
			t.Fatalf("derived context %d did not end with the call", i)
		}
	}
	for range n {
		select {
		case <-fired:
		case <-ctx.Done():
			t.Fatal("an AfterFunc on a callerContext did not run")
		}
	}
}
