package vat_test

import (
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vatcar/vatcar/vat"
)

func TestTwoVatsTCP(t *testing.T) {
	ctx := testContext(t)
	_, _, uri := hostEcho(t, "b", vat.Config{})
	a := startVat(t, vat.Config{})

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
	_, e, uri := hostEcho(t, "b", vat.Config{ListenAddress: unixAddress(t, "b")})
	a := startVat(t, vat.Config{ListenAddress: unixAddress(t, "a")})

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

func TestTwoVatsIPv6(t *testing.T) {
	ctx := testContext(t)
	if l, err := net.Listen("tcp", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	} else {
		l.Close()
	}
	_, _, uri := hostEcho(t, "b6", vat.Config{ListenAddress: "tcp:[::1]:0"})
	if !strings.Contains(uri, "@[::1]:") {
		t.Fatalf("URI %q lacks the bracketed IPv6 host", uri)
	}
	a := startVat(t, vat.Config{ListenAddress: "tcp:[::1]:0"})
	c, err := a.MustImport(uri).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	if got, err := call(ctx, c, "v6"); err != nil || got != "b6:v6" {
		t.Errorf("call = %q, %v", got, err)
	}
}

func TestKeyFilePersistsIdentity(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vat.pem")
	v1, err := vat.New(vat.Config{KeyFile: path, PublicAddress: "tcp:vat.example:7000"})
	if err != nil {
		t.Fatal(err)
	}
	uri1, _ := v1.SturdyURI(v1.DeriveID("svc"))
	v1.Close()
	v2, err := vat.New(vat.Config{KeyFile: path, PublicAddress: "tcp:vat.example:7000"})
	if err != nil {
		t.Fatal(err)
	}
	defer v2.Close()
	uri2, _ := v2.SturdyURI(v2.DeriveID("svc"))
	if uri1 != uri2 {
		t.Errorf("URI changed across restarts with one key file: %q then %q", uri1, uri2)
	}
}
