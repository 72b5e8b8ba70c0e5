package vat

import (
	"context"
	"testing"
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
