package vat_test

import (
	"context"
	"sync"
	"testing"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/vatcar/vatcar/proto/captp"
	"github.com/vatcar/vatcar/vat"
)

// callerEcho is an echo that records, for each call, CallerOf and the
// grant's peer from the call's context.
type callerEcho struct {
	echo
	mu      sync.Mutex
	callers []any
	peers   []vat.Digest
}

func (e *callerEcho) Unary(ctx context.Context, call captp.GrpcService_unary) error {
	g, ok := vat.GrantFromContext(ctx)
	e.mu.Lock()
	e.callers = append(e.callers, vat.CallerOf(ctx))
	if ok {
		e.peers = append(e.peers, g.Peer)
	} else {
		e.peers = append(e.peers, vat.Digest{})
	}
	e.mu.Unlock()
	return e.echo.Unary(ctx, call)
}

// TestCallerOf: calls over one connection share a CallerOf value, calls
// over another have another; the restore's grant reaches the same context.
func TestCallerOf(t *testing.T) {
	ctx := testContext(t)
	table := vat.NewTable(nil)
	defer table.Close()
	e := &callerEcho{echo: echo{name: "b"}}
	id := vat.GenerateID()
	table.Add(id, capnp.Client(captp.GrpcService_ServerToClient(e)))
	b := startVat(t, vat.Config{Restorer: table})
	uri, err := b.SturdyURI(id)
	if err != nil {
		t.Fatal(err)
	}
	a1, a2 := startVat(t, vat.Config{}), startVat(t, vat.Config{})
	for _, c := range []struct {
		v     *vat.Vat
		calls int
	}{{a1, 2}, {a2, 1}} {
		cl, err := c.v.MustImport(uri).Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for range c.calls {
			if _, err := call(ctx, cl, "x"); err != nil {
				t.Fatal(err)
			}
		}
		cl.Release()
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.callers) != 3 {
		t.Fatalf("%d calls recorded, want 3", len(e.callers))
	}
	if e.callers[0] == nil || e.callers[0] != e.callers[1] {
		t.Errorf("two calls over one connection: CallerOf %v and %v, want one non-nil value", e.callers[0], e.callers[1])
	}
	if e.callers[2] == nil || e.callers[2] == e.callers[0] {
		t.Errorf("a call over another connection: CallerOf %v, want non-nil and not %v", e.callers[2], e.callers[0])
	}
	for i, want := range []vat.Digest{a1.Digest(), a1.Digest(), a2.Digest()} {
		if e.peers[i] != want {
			t.Errorf("call %d: grant peer %v, want %v", i, e.peers[i], want)
		}
	}
}
