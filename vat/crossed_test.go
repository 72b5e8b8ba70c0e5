package vat_test

import (
	"fmt"
	"sync"
	"testing"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/vatcar/vatcar/vat"
)

// TestCrossedConnections has two vats dial each other at the same moment,
// 50 times over. Afterwards each pair must share exactly one connection and
// calls must work both ways; as in OCaml capnp-rpc's tests, a capability
// obtained over the connection that lost may break, so one retry of
// Connect is allowed.
func TestCrossedConnections(t *testing.T) {
	rounds := 50
	if testing.Short() {
		rounds = 10
	}
	crossed := 0
	for i := range rounds {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			if crossOnce(t) {
				crossed++
			}
		})
	}
	t.Logf("%d of %d rounds made two connections", crossed, rounds)
}

// crossOnce runs one round and reports whether both vats connected (so the
// rule had to pick one).
func crossOnce(t *testing.T) bool {
	ctx := testContext(t)
	var aConns, bConns connCounter
	a, _, aURI := hostEcho(t, "a", vat.Config{OnConnection: aConns.hook})
	b, _, bURI := hostEcho(t, "b", vat.Config{OnConnection: bConns.hook})
	aRef, bRef := b.MustImport(aURI), a.MustImport(bURI)

	var wg sync.WaitGroup
	caps := make([]capnp.Client, 2)
	errs := make([]error, 2)
	start := make(chan struct{})
	for i, ref := range []*vat.SturdyRef{bRef, aRef} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			caps[i], errs[i] = ref.Connect(ctx)
		}()
	}
	close(start)
	wg.Wait()

	waitFor(t, "one connection on each side", func() bool {
		return aConns.live() == 1 && bConns.live() == 1
	})
	for i, ref := range []*vat.SturdyRef{bRef, aRef} {
		want := []string{"b:x", "a:x"}[i]
		got, err := "", errs[i]
		if err == nil {
			got, err = call(ctx, caps[i], "x")
		}
		if err != nil { // the one retry
			caps[i].Release()
			caps[i], err = ref.Connect(ctx)
			if err != nil {
				t.Fatalf("Connect %d (retry): %v", i, err)
			}
			got, err = call(ctx, caps[i], "x")
		}
		if err != nil || got != want {
			t.Errorf("call %d = %q, %v; want %q", i, got, err, want)
		}
		caps[i].Release()
	}
	if aConns.live() != 1 || bConns.live() != 1 {
		t.Errorf("live connections a %d, b %d; want 1 each", aConns.live(), bConns.live())
	}
	if p := a.Peers(); len(p) != 1 || p[0] != b.Digest() {
		t.Errorf("a.Peers() = %v", p)
	}
	return aConns.ups.Load()+bConns.ups.Load() > 2
}
