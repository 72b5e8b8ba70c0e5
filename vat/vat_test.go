package vat_test

import (
	"testing"

	"github.com/vatcar/vatcar/vat"
)

func TestTwoVatsTCP(t *testing.T) {
	ctx := testContext(t)
	table := vat.NewTable(nil)
	defer table.Close()
	_, svc := newEcho("b")
	id := vat.GenerateID()
	table.Add(id, svc)
	b := startVat(t, vat.Config{Restorer: table})
	a := startVat(t, vat.Config{})

	uri, err := b.SturdyURI(id)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := a.Import(uri)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ref.Connect(ctx)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	defer c.Release()
	got, err := call(ctx, c, "hello")
	if err != nil {
		t.Fatalf("call: %v", err)
	}
	if want := "b:hello"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestTwoVatsUnix(t *testing.T) {
	ctx := testContext(t)
	table := vat.NewTable(nil)
	defer table.Close()
	e, svc := newEcho("b")
	id := vat.GenerateID()
	table.Add(id, svc)
	b := startVat(t, vat.Config{ListenAddress: unixAddress(t, "b"), Restorer: table})
	a := startVat(t, vat.Config{ListenAddress: unixAddress(t, "a")})

	uri, err := b.SturdyURI(id)
	if err != nil {
		t.Fatal(err)
	}
	ref := a.MustImport(uri)
	c, err := ref.Connect(ctx)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	defer c.Release()
	got, err := call(ctx, c, "over unix")
	if err != nil {
		t.Fatalf("call: %v", err)
	}
	if want := "b:over unix"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	waitFor(t, "one call", func() bool { return e.calls.Load() == 1 })
}
