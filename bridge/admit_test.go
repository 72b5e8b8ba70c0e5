package bridge

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

type callerCtxKey struct{}

// TestAdmitPerCaller checks the egress's admission with a CallerKey: each
// caller gets MaxConcurrentCalls, all together MaxTotalCalls, and past that
// a caller under its fair share still gets in.
func TestAdmitPerCaller(t *testing.T) {
	cc, err := grpc.NewClient("127.0.0.1:1", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	refused := map[bool]int{}
	e, err := newEgress(EgressConfig{
		Conn: cc, MaxConcurrentCalls: 2, MaxTotalCalls: 4,
		CallerKey:    func(ctx context.Context) any { return ctx.Value(callerCtxKey{}) },
		OnOverloaded: func(perCaller bool) { refused[perCaller]++ },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctxOf := func(caller string) context.Context {
		return context.WithValue(context.Background(), callerCtxKey{}, caller)
	}
	var slots []slot
	steps := []struct {
		caller  string
		wantErr string // "": admitted
	}{
		{"a", ""}, {"a", ""}, {"a", "on this connection (2)"}, // a's maximum
		{"b", ""}, {"b", ""}, // the total, 4, is reached
		{"c", ""},                              // under its share: 4/3
		{"d", ""},                              // under its share: 4/4
		{"c", "on this export (4, 4 callers)"}, // at its share
		{"a", "on this connection (2)"},
	}
	for i, s := range steps {
		sl, err := e.admit(ctxOf(s.caller))
		switch {
		case s.wantErr == "" && err != nil:
			t.Fatalf("step %d (%s): %v, want admitted", i, s.caller, err)
		case s.wantErr != "" && (err == nil || !strings.Contains(err.Error(), s.wantErr)):
			t.Fatalf("step %d (%s): %v, want refused %q", i, s.caller, err, s.wantErr)
		case err == nil:
			slots = append(slots, sl)
		}
	}
	if refused[true] != 2 || refused[false] != 1 {
		t.Errorf("OnOverloaded saw %d per-caller and %d total refusals, want 2 and 1", refused[true], refused[false])
	}
	if got := e.active.Load(); got != 6 {
		t.Errorf("active = %d, want 6", got)
	}
	for _, sl := range slots {
		e.release(sl)
	}
	if got, n := e.active.Load(), e.slots.Callers(); got != 0 || n != 0 {
		t.Errorf("after releasing all: active %d, %d callers; want 0, 0", got, n)
	}
	// Without a CallerKey the limit is the total.
	shared, err := newEgress(EgressConfig{Conn: cc, MaxConcurrentCalls: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := shared.admit(ctxOf("a")); err != nil {
		t.Fatal(err)
	}
	if _, err := shared.admit(ctxOf("b")); err == nil {
		t.Error("a second call without CallerKey and limit 1 was admitted")
	}
}
