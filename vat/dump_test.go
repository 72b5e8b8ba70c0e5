package vat_test

import (
	"bytes"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vatcar/vatcar/vat"
)

func TestDump(t *testing.T) {
	ctx := testContext(t)
	table := vat.NewTable(nil)
	defer table.Close()
	e, svc := newEcho("b")
	e.block = make(chan struct{})
	id := vat.GenerateID()
	table.Add(id, svc)
	b := startVat(t, vat.Config{Restorer: table})
	uri, err := b.SturdyURI(id)
	if err != nil {
		t.Fatal(err)
	}
	a := startVat(t, vat.Config{})
	c, err := a.MustImport(uri).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// The counts are the engine's tables: the restore's question and
	// answer go once its Finish has crossed, which may come a moment
	// after Connect returns. Each check polls for the state it wants.
	pub, _ := a.PublicAddress()
	out := waitForDump(t, a,
		"vat "+a.Digest().String()+" instance "+a.Instance().String(),
		"address: "+pub.String(),
		"connecting: 0",
		"connections: 1",
		b.Digest().String()+" instance "+b.Instance().String()+" (connect, up, remote 127.0.0.1:",
		"calls in 0",
		"questions 0, answers 0, imports 1, exports 0",
	)
	if strings.Contains(out, id.Base64()) {
		t.Errorf("Dump output reveals a service id:\n%s", out)
	}
	waitForDump(t, b,
		a.Digest().String()+" instance "+a.Instance().String()+" (accept, up",
		"questions 0, answers 0, imports 0, exports 1", // the echo (restored OCaml's way: no Restorer held)
	)

	// A call the echo holds is a question on a, an answer and a call in
	// on b.
	held := make(chan error, 1)
	go func() {
		_, err := call(ctx, c, "held")
		held <- err
	}()
	waitForDump(t, a, "questions 1, answers 0, imports 1, exports 0")
	waitForDump(t, b, "questions 0, answers 1, imports 0, exports 1, calls in 1")
	close(e.block)
	if err := <-held; err != nil {
		t.Fatalf("held call: %v", err)
	}
	// Once it has returned, both sides settle with no further traffic
	// (the codec sends a Finish it held back on its own).
	waitForDump(t, a, "questions 0, answers 0, imports 1, exports 0")
	waitForDump(t, b, "questions 0, answers 0, imports 0, exports 1, calls in 0")

	// Releasing the capability shows up as one import fewer, one export
	// fewer.
	c.Release()
	aConn, bConn := a.Connections()[0], b.Connections()[0]
	waitFor(t, "the release to reach both sides", func() bool {
		return aConn.Stats().Imports == 0 && bConn.Stats().Exports == 0
	})
	waitForDump(t, a, "questions 0, answers 0, imports 0, exports 0")
	waitForDump(t, b, "questions 0, answers 0, imports 0, exports 0")

	var buf bytes.Buffer
	client, err := vat.New(vat.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	client.Dump(&buf)
	if !strings.Contains(buf.String(), "address: none (client only)") {
		t.Errorf("client-only Dump:\n%s", buf.String())
	}
	if _, err := client.SturdyRef(vat.GenerateID()); !errors.Is(err, vat.ErrNoPublicAddress) {
		t.Errorf("SturdyRef on a client-only vat: got %v, want ErrNoPublicAddress", err)
	}
}

// waitForDump polls v's Dump until it contains every one of wants and
// returns that output; it fails with the last output if it never does.
func waitForDump(t *testing.T, v *vat.Vat, wants ...string) string {
	t.Helper()
	var out bytes.Buffer
	missing := func() string {
		out.Reset()
		if err := v.Dump(&out); err != nil {
			t.Fatal(err)
		}
		for _, w := range wants {
			if !strings.Contains(out.String(), w) {
				return w
			}
		}
		return ""
	}
	deadline := time.Now().Add(30 * time.Second) // generous: the machine may be busy
	for {
		m := missing()
		if m == "" {
			return out.String()
		}
		if time.Now().After(deadline) {
			t.Fatalf("Dump output lacks %q:\n%s", m, out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPublicAddressTakesBoundPort(t *testing.T) {
	v := startVat(t, vat.Config{ListenAddress: "tcp:127.0.0.1:0", PublicAddress: "tcp:vat.example:0"})
	pub, ok := v.PublicAddress()
	if !ok || pub.Host != "vat.example" || pub.Port == 0 {
		t.Errorf("PublicAddress() = %+v, %v; want vat.example with the bound port", pub, ok)
	}
	uri, err := v.SturdyURI(vat.ServiceID("x"))
	if err != nil || !strings.Contains(uri, "@vat.example:") {
		t.Errorf("SturdyURI = %q, %v", uri, err)
	}
}

func TestAddConnectionOverPipe(t *testing.T) {
	// AddConnection runs CapTP over any endpoint: here an in-memory pipe
	// between two insecure vats.
	ctx := testContext(t)
	table := vat.NewTable(nil)
	defer table.Close()
	_, svc := newEcho("b")
	id := vat.GenerateID()
	table.Add(id, svc)
	b, err := vat.New(vat.Config{Insecure: true, Restorer: table, PublicAddress: "tcp:b.example:7000"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	a, err := vat.New(vat.Config{Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	p1, p2 := net.Pipe()
	if _, err := b.AddConnection(ctx, p1, vat.Accept); err != nil {
		t.Fatal(err)
	}
	conn, err := a.AddConnection(ctx, p2, vat.Connect)
	if err != nil {
		t.Fatal(err)
	}
	if conn.Mode() != vat.Connect || !conn.Peer().IsZero() {
		t.Errorf("connection mode %v peer %v", conn.Mode(), conn.Peer())
	}
	svcCap, err := conn.Restore(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := call(ctx, svcCap, "piped"); err != nil || got != "b:piped" {
		t.Errorf("call over the pipe = %q, %v", got, err)
	}
	svcCap.Release()
	if _, err := conn.Restore(ctx, vat.GenerateID()); !errors.Is(err, vat.ErrUnknownService) {
		t.Errorf("Restore of an unknown id: got %v, want ErrUnknownService", err)
	}
	if s := b.Stats(); s.Anonymous != 1 {
		t.Errorf("b.Stats() = %+v, want 1 anonymous connection", s)
	}
	conn.Close()
	select {
	case <-conn.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("connection not done after Close")
	}
	waitFor(t, "b to drop the connection", func() bool { return b.Stats().Anonymous == 0 })
}

func TestConfigValidate(t *testing.T) {
	key, err := vat.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  vat.Config
		want string // "" = valid
	}{
		{"zero", vat.Config{}, ""},
		{"full", vat.Config{Key: key, ListenAddress: "tcp:0.0.0.0:7000", PublicAddress: "tcp:vat.example:7000", MaxConcurrentCalls: 10, MaxMessageSize: 1 << 20, HandshakeTimeout: time.Second}, ""},
		{"bad listen", vat.Config{ListenAddress: "udp:x:1"}, "listen address"},
		{"bad public", vat.Config{PublicAddress: "tcp:x"}, "public address"},
		{"public port 0 without listen", vat.Config{PublicAddress: "tcp:x:0"}, "port 0"},
		{"key and file", vat.Config{Key: key, KeyFile: "/tmp/k.pem"}, "both Key and KeyFile"},
		{"negative timeout", vat.Config{HandshakeTimeout: -1}, "negative HandshakeTimeout"},
		{"negative dial timeout", vat.Config{DialTimeout: -1}, "negative DialTimeout"},
		{"tiny messages", vat.Config{MaxMessageSize: 10}, "MaxMessageSize"},
		{"heartbeat off, no connection limit", vat.Config{HeartbeatInterval: -1, MaxConnections: -1}, ""},
		{"heartbeat set", vat.Config{HeartbeatInterval: time.Second, HeartbeatTimeout: time.Second, MaxConnections: 5}, ""},
		{"negative heartbeat timeout", vat.Config{HeartbeatTimeout: -1}, "negative HeartbeatTimeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.want == "" {
				if err != nil {
					t.Errorf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
