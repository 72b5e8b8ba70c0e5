package vat_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/vatcar/vatcar/vat"
)

func TestRemoveBreaksLiveCapability(t *testing.T) {
	ctx := testContext(t)
	table := vat.NewTable(nil)
	defer table.Close()
	_, svc := newEcho("b")
	id := vat.GenerateID()
	table.Add(id, svc)
	b := startVat(t, vat.Config{Restorer: table})
	a := startVat(t, vat.Config{})
	uri, _ := b.SturdyURI(id)

	remote, err := a.MustImport(uri).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer remote.Release()
	local, err := b.MustImport(uri).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer local.Release()
	for _, c := range []capnp.Client{remote, local} {
		if _, err := call(ctx, c, "before"); err != nil {
			t.Fatalf("call before Remove: %v", err)
		}
	}

	if !table.Remove(id) {
		t.Fatal("Remove reported the id absent")
	}
	for name, c := range map[string]capnp.Client{"remote": remote, "local": local} {
		_, err := call(ctx, c, "after")
		if err == nil || !strings.Contains(err.Error(), vat.ErrRevoked.Error()) {
			t.Errorf("%s call after Remove: got %v, want %q", name, err, vat.ErrRevoked)
		}
	}
	if _, err := a.MustImport(uri).Connect(ctx); !vat.IsUnknownService(err) {
		t.Errorf("Connect after Remove: got %v, want unknown service", err)
	}
	if table.Remove(id) {
		t.Error("second Remove reported the id present")
	}
}

func TestAddReplacesAndRevokes(t *testing.T) {
	ctx := testContext(t)
	table := vat.NewTable(nil)
	defer table.Close()
	id := vat.GenerateID()
	_, one := newEcho("one")
	table.Add(id, one)
	c1, err := table.Restore(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Release()
	_, two := newEcho("two")
	table.Add(id, two)
	if _, err := call(ctx, c1, "x"); err == nil {
		t.Error("capability of the replaced service still works")
	}
	c2, err := table.Restore(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Release()
	if got, err := call(ctx, c2, "x"); err != nil || got != "two:x" {
		t.Errorf("call = %q, %v; want two:x", got, err)
	}
	if table.Len() != 1 {
		t.Errorf("Len() = %d, want 1", table.Len())
	}
}

func TestTableUnknownID(t *testing.T) {
	table := vat.NewTable(nil)
	defer table.Close()
	if _, err := table.Restore(context.Background(), vat.GenerateID()); !errors.Is(err, vat.ErrUnknownService) {
		t.Errorf("got %v, want ErrUnknownService", err)
	}
}

func TestLoader(t *testing.T) {
	ctx := testContext(t)
	var loads atomic.Int64
	gate := make(chan struct{})
	failNext := atomic.Bool{}
	known := vat.GenerateID()
	table := vat.NewTable(vat.LoaderFunc(func(ctx context.Context, id vat.ServiceID) (capnp.Client, error) {
		loads.Add(1)
		<-gate
		if failNext.Swap(false) {
			return capnp.Client{}, errors.New("database down")
		}
		if !id.Equal(known) {
			return capnp.Client{}, vat.ErrUnknownService
		}
		_, c := newEcho("loaded")
		return c, nil
	}))
	defer table.Close()

	// Concurrent restores of one id share one load.
	const n = 10
	caps := make([]capnp.Client, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			caps[i], errs[i] = table.Restore(ctx, known)
		}()
	}
	waitFor(t, "the load to start", func() bool { return loads.Load() == 1 })
	close(gate)
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("restore %d: %v", i, errs[i])
		}
	}
	if got := loads.Load(); got != 1 {
		t.Errorf("%d loads for %d concurrent restores, want 1", got, n)
	}
	if got, err := call(ctx, caps[0], "x"); err != nil || got != "loaded:x" {
		t.Errorf("call = %q, %v", got, err)
	}

	// Cached while referenced.
	extra, err := table.Restore(ctx, known)
	if err != nil {
		t.Fatal(err)
	}
	if got := loads.Load(); got != 1 {
		t.Errorf("restore while referenced loaded again (%d loads)", got)
	}
	extra.Release()
	for _, c := range caps {
		c.Release()
	}
	// Once unreferenced it is dropped and loads again.
	waitFor(t, "the cache to drop the loaded service", func() bool { return table.Len() == 0 })
	again, err := table.Restore(ctx, known)
	if err != nil {
		t.Fatal(err)
	}
	again.Release()
	if got := loads.Load(); got != 2 {
		t.Errorf("loads = %d after the cache dropped the service, want 2", got)
	}

	// Errors are not cached.
	failNext.Store(true)
	other := vat.GenerateID()
	if _, err := table.Restore(ctx, other); err == nil || !strings.Contains(err.Error(), "database down") {
		t.Errorf("failing load: got %v", err)
	}
	if _, err := table.Restore(ctx, other); !errors.Is(err, vat.ErrUnknownService) {
		t.Errorf("unknown id after a failed load: got %v, want ErrUnknownService", err)
	}
	if got := loads.Load(); got != 4 {
		t.Errorf("loads = %d, want 4 (failures are not cached)", got)
	}
}

func TestTableRestoreRemove_Stress(t *testing.T) {
	ctx := testContext(t)
	table := vat.NewTable(nil)
	defer table.Close()
	id := vat.GenerateID()
	_, svc := newEcho("s")
	table.Add(id, svc)

	var wg sync.WaitGroup
	var ok, failed atomic.Int64
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := table.Restore(ctx, id)
				if err != nil {
					if !errors.Is(err, vat.ErrUnknownService) {
						t.Errorf("Restore: %v", err)
						return
					}
					failed.Add(1)
					continue
				}
				_, err = call(ctx, c, "x")
				c.Release()
				switch {
				case err == nil:
					ok.Add(1)
				case strings.Contains(err.Error(), vat.ErrRevoked.Error()):
					failed.Add(1)
				default:
					t.Errorf("call: %v", err)
				}
			}
		}()
	}
	for i := range 30 {
		table.Remove(id)
		_, fresh := newEcho("s")
		table.Add(id, fresh)
		if i%10 == 0 {
			waitFor(t, "a call to succeed", func() bool { return ok.Load() > int64(i/10) })
		}
	}
	close(stop)
	wg.Wait()
	if ok.Load() == 0 {
		t.Error("no call succeeded")
	}
	t.Logf("%d calls succeeded, %d failed on revocation", ok.Load(), failed.Load())
}
