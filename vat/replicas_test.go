package vat_test

import (
	"fmt"
	"sync"
	"testing"

	"github.com/vatcar/vatcar/vat"
)

// replica starts a vat with key k whose table serves an echo named name
// under id, as every replica of one workload serves the same ids.
func replica(t *testing.T, k *vat.Key, name string, id vat.ServiceID, cfg vat.Config) (*vat.Vat, string) {
	t.Helper()
	table := vat.NewTable(nil)
	t.Cleanup(table.Close)
	_, svc := newEcho(name)
	table.Add(id, svc)
	cfg.Key, cfg.Restorer = k, table
	v := startVat(t, cfg)
	uri, err := v.SturdyURI(id)
	if err != nil {
		t.Fatal(err)
	}
	return v, uri
}

func mustKey(t *testing.T) *vat.Key {
	t.Helper()
	k, err := vat.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestReplicasSharingAKeyKeepTheirConnections has three importing vats that
// share one key call one exporter at once: each keeps its own connection (a
// connection from one instance never replaces another's) and no call fails.
func TestReplicasSharingAKeyKeepTheirConnections(t *testing.T) {
	ctx := testContext(t)
	var conns connCounter
	_, _, uri := hostEcho(t, "e", vat.Config{OnConnection: conns.hook})
	shared := mustKey(t)
	const importers, calls = 3, 200
	var wg sync.WaitGroup
	errs := make(chan error, importers*calls)
	for i := range importers {
		v := startVat(t, vat.Config{Key: shared})
		wg.Go(func() {
			c, err := v.MustImport(uri).Connect(ctx)
			if err != nil {
				errs <- fmt.Errorf("importer %d: Connect: %w", i, err)
				return
			}
			defer c.Release()
			for j := range calls {
				if got, err := call(ctx, c, "x"); err != nil || got != "e:x" {
					errs <- fmt.Errorf("importer %d call %d: got %q, %v; want e:x", i, j, got, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	failed := 0
	for err := range errs {
		if failed++; failed <= 5 {
			t.Error(err)
		}
	}
	if failed > 0 {
		t.Errorf("%d of %d calls failed", failed, importers*calls)
	}
	if got := conns.live(); got != importers {
		t.Errorf("exporter has %d live connections, want one per importer (%d)", got, importers)
	}
	if got := conns.ups.Load(); got != importers {
		t.Errorf("exporter saw %d connections, want %d (none replaced)", got, importers)
	}
}

// TestCrossedConnectionsBetweenInstances has two identities of two
// instances each, and every instance dials every instance of the other
// identity while that one dials it back: afterwards each instance pair
// shares exactly one connection and calls pass both ways.
func TestCrossedConnectionsBetweenInstances(t *testing.T) {
	ctx := testContext(t)
	type inst struct {
		v     *vat.Vat
		uri   string
		conns *connCounter
	}
	idA, idB := vat.GenerateID(), vat.GenerateID()
	kA, kB := mustKey(t), mustKey(t)
	var as, bs []inst
	for i := range 2 {
		for _, side := range []struct {
			k    *vat.Key
			id   vat.ServiceID
			name string
			into *[]inst
		}{{kA, idA, "a", &as}, {kB, idB, "b", &bs}} {
			var cc connCounter
			v, uri := replica(t, side.k, fmt.Sprint(side.name, i), side.id, vat.Config{OnConnection: cc.hook})
			*side.into = append(*side.into, inst{v, uri, &cc})
		}
	}
	type dialing struct {
		from inst
		to   inst
		want string
	}
	var all []dialing
	for i, a := range as {
		for j, b := range bs {
			all = append(all, dialing{a, b, fmt.Sprintf("b%d:x", j)}, dialing{b, a, fmt.Sprintf("a%d:x", i)})
		}
	}
	var wg sync.WaitGroup
	start := make(chan struct{})
	results := make([]string, len(all))
	for k, d := range all {
		wg.Go(func() {
			<-start
			ref := d.from.v.MustImport(d.to.uri)
			// A capability from a connection that loses the crossing may
			// break; rarely a second dial still finds a losing one (about 1
			// run of this test in 700, before and after issue 16's changes),
			// so a third must pass.
			for attempt := range 3 {
				c, conn, err := ref.Dial(ctx)
				if err == nil {
					if conn == nil || conn.Peer() != d.to.v.Digest() || conn.Instance() != d.to.v.Instance() {
						results[k] = "dialled the wrong process"
						c.Release()
						return
					}
					got, cerr := call(ctx, c, "x")
					c.Release()
					if cerr == nil {
						results[k] = got
						return
					}
					err = cerr
				}
				results[k] = fmt.Sprintf("attempt %d: %v", attempt, err)
			}
		})
	}
	close(start)
	wg.Wait()
	for k, d := range all {
		if results[k] != d.want {
			t.Errorf("dial %d: got %q, want %q", k, results[k], d.want)
		}
	}
	for _, in := range append(as, bs...) {
		waitFor(t, "one connection per instance pair", func() bool { return in.conns.live() == 2 })
		if n := len(in.v.Connections()); n != 2 {
			t.Errorf("instance %v has %d connections, want 2", in.v.Instance(), n)
		}
	}
}

// TestInstancesOfOneIdentityCross has two instances of one identity dial
// each other at once: one connection survives, chosen by their instance
// ids; and an instance that dials its own address restores locally.
func TestInstancesOfOneIdentityCross(t *testing.T) {
	ctx := testContext(t)
	k, id := mustKey(t), vat.GenerateID()
	var c1, c2 connCounter
	v1, uri1 := replica(t, k, "one", id, vat.Config{OnConnection: c1.hook})
	v2, uri2 := replica(t, k, "two", id, vat.Config{OnConnection: c2.hook})
	var wg sync.WaitGroup
	start := make(chan struct{})
	got := make([]string, 2)
	for i, d := range []struct {
		from *vat.Vat
		uri  string
	}{{v1, uri2}, {v2, uri1}} {
		wg.Go(func() {
			<-start
			// A dial made while the crossing settles may meet a losing
			// connection twice (docs/design.md, "crossed"), as in
			// TestCrossedConnectionsBetweenInstances: three attempts.
			for range 3 {
				c, _, err := d.from.MustImport(d.uri).Dial(ctx)
				if err != nil {
					got[i] = err.Error()
					continue
				}
				got[i], err = call(ctx, c, "x")
				c.Release()
				if err == nil {
					return
				}
				got[i] = err.Error()
			}
		})
	}
	close(start)
	wg.Wait()
	if got[0] != "two:x" || got[1] != "one:x" {
		t.Errorf("calls across instances: got %q, want [two:x one:x]", got)
	}
	waitFor(t, "one connection each", func() bool { return c1.live() == 1 && c2.live() == 1 })

	c, conn, err := v1.MustImport(uri1).Dial(ctx)
	if err != nil {
		t.Fatalf("Dial own address: %v", err)
	}
	defer c.Release()
	if conn != nil {
		t.Errorf("Dial own address returned a connection to %v/%v", conn.Peer(), conn.Instance())
	}
	if got, err := call(ctx, c, "x"); err != nil || got != "one:x" {
		t.Errorf("local call: got %q, %v; want one:x", got, err)
	}
	if c1.live() != 1 {
		t.Errorf("v1 has %d live connections after dialling itself, want 1", c1.live())
	}
}
