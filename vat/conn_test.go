package vat_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"

	"github.com/vatcar/vatcar/vat"
)

// connCounter counts a vat's connections through Config.OnConnection.
type connCounter struct {
	ups, downs atomic.Int64
}

func (c *connCounter) hook(_ vat.Digest, up bool) {
	if up {
		c.ups.Add(1)
	} else {
		c.downs.Add(1)
	}
}

func (c *connCounter) live() int64 { return c.ups.Load() - c.downs.Load() }

// hostEcho starts a vat whose table serves an echo named name, and returns
// the vat, the echo and the service's URI.
func hostEcho(t testing.TB, name string, cfg vat.Config) (*vat.Vat, *echo, string) {
	t.Helper()
	table := vat.NewTable(nil)
	t.Cleanup(table.Close)
	e, svc := newEcho(name)
	id := vat.GenerateID()
	table.Add(id, svc)
	cfg.Restorer = table
	v := startVat(t, cfg)
	uri, err := v.SturdyURI(id)
	if err != nil {
		t.Fatal(err)
	}
	return v, e, uri
}

func TestWrongDigestRefused(t *testing.T) {
	ctx := testContext(t)
	_, _, uri := hostEcho(t, "b", vat.Config{})
	a := startVat(t, vat.Config{})
	impostor, err := vat.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	loc, id, err := vat.ParseURI(uri)
	if err != nil {
		t.Fatal(err)
	}
	real := loc.Digest
	loc.Digest = impostor.Digest()
	ref := a.MustImport(vat.FormatURI(loc, id))

	_, err = ref.Connect(ctx)
	if err == nil {
		t.Fatal("Connect to a vat with another key succeeded")
	}
	if !errors.Is(err, vat.ErrKeyMismatch) || !vat.IsDisconnected(err) {
		t.Errorf("error %v: want ErrKeyMismatch and IsDisconnected", err)
	}
	for _, want := range []string{"key mismatch", impostor.Digest().String(), real.String()} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if s := a.Stats(); s.Peers != 0 {
		t.Errorf("after a refused handshake the vat has %d peers, want 0", s.Peers)
	}
}

func TestUnknownID(t *testing.T) {
	ctx := testContext(t)
	var restores, failed atomic.Int64
	b, _, good := hostEcho(t, "b", vat.Config{OnRestore: func(r vat.RestoreResult) {
		restores.Add(1)
		if r == vat.RestoreUnknown {
			failed.Add(1)
		}
	}})
	a := startVat(t, vat.Config{})
	uri, err := b.SturdyURI(vat.GenerateID())
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.MustImport(uri).Connect(ctx)
	if !errors.Is(err, vat.ErrUnknownService) || !vat.IsUnknownService(err) {
		t.Fatalf("Connect with an unknown id: got %v, want ErrUnknownService", err)
	}
	if !strings.Contains(err.Error(), "Unknown persistent service ID") {
		t.Errorf("error %q lacks the seed's text", err)
	}
	if vat.IsDisconnected(err) {
		t.Errorf("unknown id reported as disconnected: %v", err)
	}
	c, err := a.MustImport(good).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c.Release()
	if restores.Load() != 2 || failed.Load() != 1 {
		t.Errorf("OnRestore saw %d restores, %d unknown; want 2, 1", restores.Load(), failed.Load())
	}
}

func TestNoRestorer(t *testing.T) {
	ctx := testContext(t)
	b := startVat(t, vat.Config{})
	a := startVat(t, vat.Config{})
	uri, err := b.SturdyURI(vat.GenerateID())
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.MustImport(uri).Connect(ctx)
	if !errors.Is(err, vat.ErrNoRestorer) || !strings.Contains(err.Error(), "This vat has no restorer") {
		t.Fatalf("got %v, want ErrNoRestorer", err)
	}
	// Locally too.
	_, err = b.MustImport(uri).Connect(ctx)
	if !errors.Is(err, vat.ErrNoRestorer) {
		t.Fatalf("local restore: got %v, want ErrNoRestorer", err)
	}
}

func TestSelfImportMakesNoConnection(t *testing.T) {
	ctx := testContext(t)
	var conns connCounter
	v, e, uri := hostEcho(t, "self", vat.Config{OnConnection: conns.hook})
	ref := v.MustImport(uri)
	if !ref.IsLocal() {
		t.Error("IsLocal() = false for the vat's own ref")
	}
	c, err := ref.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	got, err := call(ctx, c, "me")
	if err != nil || got != "self:me" {
		t.Fatalf("call = %q, %v", got, err)
	}
	if n := conns.ups.Load(); n != 0 {
		t.Errorf("self import made %d connections, want 0", n)
	}
	if s := v.Stats(); s.Peers+s.Anonymous+s.Connecting != 0 {
		t.Errorf("stats %+v, want no connections", s)
	}
	if e.calls.Load() != 1 {
		t.Errorf("echo saw %d calls, want 1", e.calls.Load())
	}
}

func TestParallelConnectsShareOneConnection(t *testing.T) {
	ctx := testContext(t)
	var bConns, aConns connCounter
	b, _, uri := hostEcho(t, "b", vat.Config{OnConnection: bConns.hook})
	a := startVat(t, vat.Config{OnConnection: aConns.hook})
	ref := a.MustImport(uri)

	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := ref.Connect(ctx)
			if err != nil {
				errs <- err
				return
			}
			defer c.Release()
			if _, err := call(ctx, c, string(rune('a'+i))); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := aConns.ups.Load(); got != 1 {
		t.Errorf("client vat made %d connections, want 1", got)
	}
	if got := bConns.ups.Load(); got != 1 {
		t.Errorf("server vat accepted %d connections, want 1", got)
	}
	if peers := a.Peers(); len(peers) != 1 || peers[0] != b.Digest() {
		t.Errorf("a.Peers() = %v, want [%v]", peers, b.Digest())
	}
}

func TestInboundConnectionIsReused(t *testing.T) {
	// A dials B; B then connects to a service hosted by A and must use the
	// connection A made rather than dial back.
	ctx := testContext(t)
	var aConns, bConns connCounter
	a, _, aURI := hostEcho(t, "a", vat.Config{OnConnection: aConns.hook})
	b, _, bURI := hostEcho(t, "b", vat.Config{OnConnection: bConns.hook})

	cb, err := a.MustImport(bURI).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Release()
	ca, err := b.MustImport(aURI).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Release()
	for c, want := range map[*capnp.Client]string{&cb: "b:x", &ca: "a:x"} {
		if got, err := call(ctx, *c, "x"); err != nil || got != want {
			t.Errorf("call = %q, %v; want %q", got, err, want)
		}
	}
	if a, b := aConns.ups.Load(), bConns.ups.Load(); a != 1 || b != 1 {
		t.Errorf("connections made: a %d, b %d; want 1 each", a, b)
	}
}

func TestThreeVats(t *testing.T) {
	ctx := testContext(t)
	c, _, cURI := hostEcho(t, "c", vat.Config{})
	// B re-exports C's service through its own table: a proxy.
	bTable := vat.NewTable(nil)
	defer bTable.Close()
	b := startVat(t, vat.Config{Restorer: bTable})
	fromC, err := b.MustImport(cURI).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	proxyID := vat.GenerateID()
	bTable.Add(proxyID, fromC)
	proxyURI, err := b.SturdyURI(proxyID)
	if err != nil {
		t.Fatal(err)
	}
	a := startVat(t, vat.Config{})

	viaB, err := a.MustImport(proxyURI).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer viaB.Release()
	direct, err := a.MustImport(cURI).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Release()
	for name, cap := range map[string]capnp.Client{"via b": viaB, "direct": direct} {
		if got, err := call(ctx, cap, name); err != nil || got != "c:"+name {
			t.Errorf("%s: call = %q, %v; want %q", name, got, err, "c:"+name)
		}
	}
	if got := len(a.Peers()); got != 2 {
		t.Errorf("a has %d peers, want 2 (b and c)", got)
	}
	if got := len(c.Peers()); got != 2 {
		t.Errorf("c has %d peers, want 2 (a and b)", got)
	}
}

func TestCapabilityBreaksWhenPeerCloses(t *testing.T) {
	ctx := testContext(t)
	bCfg := vat.Config{ListenAddress: unixAddress(t, "b")}
	key, err := vat.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	bCfg.Key = key
	table := vat.NewTable(nil)
	defer table.Close()
	_, svc := newEcho("b1")
	id := vat.GenerateID()
	table.Add(id, svc)
	bCfg.Restorer = table

	b1, err := vat.New(bCfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := b1.Listen()
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- b1.Serve(ctx, l) }()
	uri, err := b1.SturdyURI(id)
	if err != nil {
		t.Fatal(err)
	}

	a := startVat(t, vat.Config{})
	ref := a.MustImport(uri)
	c, err := ref.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	if _, err := call(ctx, c, "before"); err != nil {
		t.Fatal(err)
	}

	// The peer goes away: the capability breaks with a disconnected error.
	b1.Close()
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
	_, err = call(ctx, c, "during")
	if !vat.IsDisconnected(err) {
		t.Errorf("call after the peer closed: got %v, want a disconnected error", err)
	}
	if _, err := ref.Connect(ctx); !vat.IsDisconnected(err) {
		t.Errorf("Connect with the peer down: got %v, want a disconnected error", err)
	}

	// It comes back (same key, same address): Connect dials again.
	_, svc2 := newEcho("b2")
	table.Add(id, svc2)
	b2 := startVat(t, bCfg)
	_ = b2
	c2, err := ref.Connect(ctx)
	if err != nil {
		t.Fatalf("Connect after the peer restarted: %v", err)
	}
	defer c2.Release()
	if got, err := call(ctx, c2, "after"); err != nil || got != "b2:after" {
		t.Errorf("call = %q, %v; want %q", got, err, "b2:after")
	}
}

func TestRelayedDisconnectKeepsConnection(t *testing.T) {
	// B's restorer fails with a Disconnected exception of its own (say, a
	// vat behind it is down). A must report it without dropping its sound
	// connection to B.
	ctx := testContext(t)
	table := vat.NewTable(nil)
	defer table.Close()
	_, svc := newEcho("b")
	good := vat.GenerateID()
	table.Add(good, svc)
	restorer := vat.RestorerFunc(func(ctx context.Context, id vat.ServiceID) (capnp.Client, error) {
		if id.Equal(good) {
			return table.Restore(ctx, id)
		}
		return capnp.Client{}, exc.New(exc.Disconnected, "", "upstream vat unreachable")
	})
	b := startVat(t, vat.Config{Restorer: restorer})
	var conns connCounter
	a := startVat(t, vat.Config{OnConnection: conns.hook})
	goodURI, _ := b.SturdyURI(good)
	c, err := a.MustImport(goodURI).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()

	badURI, _ := b.SturdyURI(vat.GenerateID())
	_, err = a.MustImport(badURI).Connect(ctx)
	if !vat.IsDisconnected(err) || !strings.Contains(err.Error(), "upstream vat unreachable") {
		t.Errorf("got %v, want the relayed disconnected error", err)
	}
	if got, err := call(ctx, c, "still"); err != nil || got != "b:still" {
		t.Errorf("call on the first capability = %q, %v", got, err)
	}
	if conns.ups.Load() != 1 || conns.downs.Load() != 0 {
		t.Errorf("connections up %d, down %d; want 1, 0", conns.ups.Load(), conns.downs.Load())
	}
}
