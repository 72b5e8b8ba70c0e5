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
	"github.com/vatcar/vatcar/vat/engine"
)

func TestInsecureVats(t *testing.T) {
	ctx := testContext(t)
	_, _, uri := hostEcho(t, "b", vat.Config{Insecure: true})
	if !strings.HasPrefix(uri, "capnp://insecure@127.0.0.1:") {
		t.Fatalf("insecure URI %q", uri)
	}
	var conns connCounter
	a := startVat(t, vat.Config{Insecure: true, OnConnection: conns.hook})
	ref := a.MustImport(uri)
	for range 2 {
		c, err := ref.Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := call(ctx, c, "plain"); err != nil || got != "b:plain" {
			t.Errorf("call = %q, %v", got, err)
		}
		c.Release()
	}
	if got := conns.ups.Load(); got != 1 {
		t.Errorf("%d connections to one insecure peer, want 1", got)
	}

	secure := startVat(t, vat.Config{})
	if _, err := secure.Import(uri); !errors.Is(err, vat.ErrInsecureMismatch) {
		t.Errorf("secure vat importing an insecure URI: got %v, want ErrInsecureMismatch", err)
	}
	_, _, secureURI := hostEcho(t, "s", vat.Config{})
	if _, err := a.Import(secureURI); !errors.Is(err, vat.ErrInsecureMismatch) {
		t.Errorf("insecure vat importing a secure URI: got %v, want ErrInsecureMismatch", err)
	}
}

func TestConcurrencyLimitOverloaded(t *testing.T) {
	ctx := testContext(t)
	table := vat.NewTable(nil)
	defer table.Close()
	e, svc := newEcho("b")
	e.block = make(chan struct{})
	id := vat.GenerateID()
	table.Add(id, svc)
	b := startVat(t, vat.Config{Restorer: table, MaxConcurrentCalls: 2})
	a := startVat(t, vat.Config{})
	uri, _ := b.SturdyURI(id)
	c, err := a.MustImport(uri).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()

	var wg sync.WaitGroup
	results := make([]error, 2)
	var failed atomic.Pointer[error] // a held call that ended early, and why
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, results[i] = call(ctx, c, "held")
			if results[i] != nil {
				failed.CompareAndSwap(nil, &results[i])
			}
		}()
	}
	waitFor(t, "two calls running", func() bool {
		if err := failed.Load(); err != nil {
			t.Fatalf("a held call failed before both ran: %v", *err)
		}
		return e.calls.Load() == 2
	})
	if got := b.Stats().CallsRunning; got != 2 {
		t.Errorf("Stats().CallsRunning = %d, want 2", got)
	}
	_, err = call(ctx, c, "one too many")
	if !vat.IsOverloaded(err) {
		t.Errorf("third call: got %v, want an Overloaded exception", err)
	}
	close(e.block)
	wg.Wait()
	for i, err := range results {
		if err != nil {
			t.Errorf("held call %d: %v", i, err)
		}
	}
	if got, err := call(ctx, c, "later"); err != nil || got != "b:later" {
		t.Errorf("call after the limit cleared = %q, %v", got, err)
	}
}

// TestMaxMessageSize: a call over the callee's limit, and a reply over
// the caller's, fail that call with Overloaded naming the sizes; the
// connection lives and the next call on the same capability passes.
func TestMaxMessageSize(t *testing.T) {
	ctx := testContext(t)
	_, _, uri := hostEcho(t, "b", vat.Config{MaxMessageSize: 8 << 10})
	var limits []string
	var mu sync.Mutex
	a := startVat(t, vat.Config{MaxMessageSize: 4 << 10, OnLimit: func(r string) {
		mu.Lock()
		defer mu.Unlock()
		limits = append(limits, r)
	}})
	ref := a.MustImport(uri)
	c, err := ref.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	if _, err := call(ctx, c, strings.Repeat("s", 1<<10)); err != nil {
		t.Fatalf("small call: %v", err)
	}
	_, err = call(ctx, c, strings.Repeat("L", 64<<10))
	if !vat.IsOverloaded(err) || !strings.Contains(err.Error(), "limit of 8192 bytes") {
		t.Errorf("call over the callee's limit: got %v, want Overloaded naming the limit", err)
	}
	if got, err := call(ctx, c, "ok"); err != nil || got != "b:ok" {
		t.Errorf("call after: %q, %v", got, err)
	}
	// Under b's limit, but b's echo comes back over a's.
	_, err = call(ctx, c, strings.Repeat("R", 6<<10))
	if !vat.IsOverloaded(err) || !strings.Contains(err.Error(), "reply message of") || !strings.Contains(err.Error(), "limit of 4096 bytes") {
		t.Errorf("reply over the caller's limit: got %v, want Overloaded naming the limit", err)
	}
	if got, err := call(ctx, c, "ok2"); err != nil || got != "b:ok2" {
		t.Errorf("call after: %q, %v", got, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(limits) != 1 || limits[0] != engine.LimitMessageSize {
		t.Errorf("a's OnLimit got %v, want one %q", limits, engine.LimitMessageSize)
	}
}

func TestClosedVat(t *testing.T) {
	ctx := testContext(t)
	_, _, uri := hostEcho(t, "b", vat.Config{})
	a, err := vat.New(vat.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ref := a.MustImport(uri)
	c, err := ref.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := call(ctx, c, "x"); !vat.IsDisconnected(err) {
		t.Errorf("call after Close: got %v, want disconnected", err)
	}
	if _, err := ref.Connect(ctx); !errors.Is(err, vat.ErrClosed) {
		t.Errorf("Connect after Close: got %v, want ErrClosed", err)
	}
	if err := a.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestConcurrentRestoresAreLimited(t *testing.T) {
	ctx := testContext(t)
	gate := make(chan struct{})
	var loading atomic.Int64
	table := vat.NewTable(vat.LoaderFunc(func(ctx context.Context, id vat.ServiceID) (capnp.Client, error) {
		loading.Add(1)
		select {
		case <-gate:
		case <-ctx.Done():
			return capnp.Client{}, ctx.Err()
		}
		_, c := newEcho("loaded")
		return c, nil
	}))
	defer table.Close()
	b := startVat(t, vat.Config{Restorer: table, MaxConcurrentCalls: 1})
	a := startVat(t, vat.Config{})
	uri1, _ := b.SturdyURI(vat.GenerateID())
	uri2, _ := b.SturdyURI(vat.GenerateID())

	first := make(chan error, 1)
	go func() {
		c, err := a.MustImport(uri1).Connect(ctx)
		if err == nil {
			c.Release()
		}
		first <- err
	}()
	waitFor(t, "the first restore to be loading", func() bool { return loading.Load() == 1 })
	if _, err := a.MustImport(uri2).Connect(ctx); !vat.IsOverloaded(err) {
		t.Errorf("second concurrent restore: got %v, want Overloaded", err)
	}
	close(gate)
	if err := <-first; err != nil {
		t.Errorf("first restore: %v", err)
	}
}
