package vat_test

import (
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vatcar/vatcar/vat"
)

// readToEnd reads c until the far side closes it (nil) or the read
// deadline passes (an error).
func readToEnd(c net.Conn) error {
	_, err := io.Copy(io.Discard, c)
	if errors.Is(err, syscall.ECONNRESET) {
		return nil
	}
	return err
}

// freezer stops the connections of a freezeListener on demand, as SIGSTOP
// stops a process: nothing is written and nothing more is read, while the
// kernel keeps the sockets open.
type freezer struct {
	mu   sync.Mutex
	thaw chan struct{} // nil when not frozen
	read atomic.Int64  // bytes read by all connections
}

func (f *freezer) freeze() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.thaw == nil {
		f.thaw = make(chan struct{})
	}
}

func (f *freezer) unfreeze() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.thaw != nil {
		close(f.thaw)
		f.thaw = nil
	}
}

// wait blocks while f is frozen, until closed is.
func (f *freezer) wait(closed <-chan struct{}) error {
	f.mu.Lock()
	thaw := f.thaw
	f.mu.Unlock()
	if thaw == nil {
		return nil
	}
	select {
	case <-thaw:
		return nil
	case <-closed:
		return net.ErrClosed
	}
}

type freezeListener struct {
	net.Listener
	f *freezer
}

func (l freezeListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &freezeConn{Conn: c, f: l.f, closed: make(chan struct{})}, nil
}

type freezeConn struct {
	net.Conn
	f      *freezer
	once   sync.Once
	closed chan struct{}
}

func (c *freezeConn) Read(b []byte) (int, error) {
	if err := c.f.wait(c.closed); err != nil {
		return 0, err
	}
	n, err := c.Conn.Read(b)
	c.f.read.Add(int64(n))
	return n, err
}

func (c *freezeConn) Write(b []byte) (int, error) {
	if err := c.f.wait(c.closed); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}

func (c *freezeConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// serveOn starts v serving on wrap(its listener) until the test ends.
func serveOn(t *testing.T, v *vat.Vat, wrap func(net.Listener) net.Listener) {
	t.Helper()
	l, err := v.Listen()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- v.Serve(context.Background(), wrap(l)) }()
	t.Cleanup(func() {
		v.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
}

func TestHeartbeatClosesFrozenPeer(t *testing.T) {
	ctx := testContext(t)
	fast := vat.Config{HeartbeatInterval: 20 * time.Millisecond, HeartbeatTimeout: time.Second}

	table := vat.NewTable(nil)
	defer table.Close()
	_, svc := newEcho("b")
	id := vat.GenerateID()
	table.Add(id, svc)
	// Either side may be the one that pings: the other's answers keep the
	// pinging side's peer looking alive and the pings keep its own, so
	// count both sides' restores.
	var failedRestores, emptyRestores atomic.Int64
	onRestore := func(r vat.RestoreResult) {
		switch r {
		case vat.RestoreEmpty:
			emptyRestores.Add(1)
		case vat.RestoreOK:
		default:
			failedRestores.Add(1)
		}
	}
	bcfg := fast
	bcfg.ListenAddress = "tcp:127.0.0.1:0"
	bcfg.Restorer = table
	bcfg.OnRestore = onRestore
	b, err := vat.New(bcfg)
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{}
	defer f.unfreeze() // before b's Close, so that b can end
	serveOn(t, b, func(l net.Listener) net.Listener { return freezeListener{l, f} })

	var conns connCounter
	var heartbeatCloses atomic.Int64
	acfg := fast
	acfg.OnConnection = conns.hook
	acfg.OnRestore = onRestore
	acfg.OnRefused = func(reason string) {
		if reason == vat.RefusedHeartbeat {
			heartbeatCloses.Add(1)
		}
	}
	a := startVat(t, acfg)
	uri, _ := b.SturdyURI(id)
	ref := a.MustImport(uri)
	c, err := ref.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	if got, err := call(ctx, c, "x"); err != nil || got != "b:x" {
		t.Fatalf("call = %q, %v", got, err)
	}

	// Idle but alive: heartbeats flow (b reads them) and keep nothing from
	// working.
	before := f.read.Load()
	waitFor(t, "heartbeats from a", func() bool { return f.read.Load() > before+200 })
	if got, err := call(ctx, c, "y"); err != nil || got != "b:y" {
		t.Fatalf("call after heartbeats = %q, %v", got, err)
	}
	if n := conns.downs.Load(); n != 0 {
		t.Fatalf("%d connections closed while the peer answered", n)
	}
	if n := failedRestores.Load(); n != 0 {
		t.Errorf("heartbeats counted as %d failed restores", n)
	}
	// Counted as the restore is handled, which may come after its bytes
	// were read and after the call above: wait for it.
	waitFor(t, "heartbeats (empty-id restores) counted as RestoreEmpty", func() bool { return emptyRestores.Load() > 0 })

	f.freeze()
	// A call in flight on the frozen peer fails when the heartbeat finds
	// it, not at its own deadline (ctx's, far later).
	inflight := make(chan error, 1)
	go func() {
		_, err := call(ctx, c, "in flight")
		inflight <- err
	}()
	waitFor(t, "a to close the frozen connection", func() bool { return conns.downs.Load() == 1 })
	if n := heartbeatCloses.Load(); n != 1 {
		t.Errorf("OnRefused saw %d heartbeat closes, want 1", n)
	}
	if err := <-inflight; !vat.IsDisconnected(err) {
		t.Errorf("call in flight on the frozen peer: %v, want a disconnected error", err)
	}
	if _, err := call(ctx, c, "z"); !vat.IsDisconnected(err) {
		t.Errorf("call over the closed connection: %v, want a disconnected error", err)
	}

	f.unfreeze()
	c2, err := ref.Connect(ctx)
	if err != nil {
		t.Fatalf("Connect after the peer thawed: %v", err)
	}
	defer c2.Release()
	if got, err := call(ctx, c2, "again"); err != nil || got != "b:again" {
		t.Errorf("call over the new connection = %q, %v", got, err)
	}
}

func TestHeartbeatOff(t *testing.T) {
	ctx := testContext(t)
	b, _, uri := hostEcho(t, "b", vat.Config{HeartbeatInterval: -1})
	a := startVat(t, vat.Config{HeartbeatInterval: -1})
	c, err := a.MustImport(uri).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	if got, err := call(ctx, c, "x"); err != nil || got != "b:x" {
		t.Fatalf("call = %q, %v", got, err)
	}
	if s := b.Stats(); s.Peers != 1 || s.Inbound != 1 {
		t.Errorf("b.Stats() = %+v, want one peer, one inbound connection", s)
	}
}

func TestInsecureSilentConnectionClosed(t *testing.T) {
	ctx := testContext(t)
	const timeout = 100 * time.Millisecond
	b, _, _ := hostEcho(t, "b", vat.Config{Insecure: true, HandshakeTimeout: timeout})
	baseline := runtime.NumGoroutine()

	addr, _ := b.PublicAddress()
	raw, err := net.Dial("tcp", net.JoinHostPort(addr.Host, strconv.Itoa(addr.Port)))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	waitFor(t, "b to take the connection", func() bool { return b.Stats().Anonymous == 1 })
	raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := readToEnd(raw); err != nil {
		t.Fatalf("read from a silent connection: %v, want it closed by b", err)
	}
	waitFor(t, "b to drop the connection", func() bool { return b.Stats().Anonymous == 0 && b.Stats().Inbound == 0 })
	waitFor(t, "goroutines back to the baseline", func() bool { return runtime.NumGoroutine() <= baseline })

	// A peer that talks keeps its connection past the timeout. This vat
	// gives the first message a second, not 100 ms: a loaded machine
	// (-race, other tests) may take longer than 100 ms to send it.
	const talkTimeout = time.Second
	_, _, uri2 := hostEcho(t, "b2", vat.Config{Insecure: true, HandshakeTimeout: talkTimeout})
	a := startVat(t, vat.Config{Insecure: true})
	connected := time.Now()
	c, err := a.MustImport(uri2).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	<-time.After(time.Until(connected.Add(talkTimeout + talkTimeout/2))) // past the first-message deadline
	if got, err := call(ctx, c, "x"); err != nil || got != "b2:x" {
		t.Errorf("call after the first-message deadline = %q, %v", got, err)
	}
}

func TestMaxConnections(t *testing.T) {
	ctx := testContext(t)
	var mu sync.Mutex
	refused := map[string]int{}
	// StrangerGrace off: the held slots are never given to newcomers here
	// (TestIdleStrangersMakeRoom covers that).
	b, _, uri := hostEcho(t, "b", vat.Config{MaxConnections: 2, StrangerGrace: -1, OnRefused: func(reason string) {
		mu.Lock()
		refused[reason]++
		mu.Unlock()
	}})
	count := func(reason string) int {
		mu.Lock()
		defer mu.Unlock()
		return refused[reason]
	}
	addr, _ := b.PublicAddress()
	target := net.JoinHostPort(addr.Host, strconv.Itoa(addr.Port))

	// Two strangers that never finish their handshake hold both slots.
	var held []net.Conn
	for range 2 {
		raw, err := net.Dial("tcp", target)
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		held = append(held, raw)
		n := len(held)
		waitFor(t, "b to hold the connection", func() bool { return b.Stats().Inbound == n })
	}
	third, err := net.Dial("tcp", target)
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	third.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := readToEnd(third); err != nil {
		t.Fatalf("read from a connection over the limit: %v, want it closed by b", err)
	}
	waitFor(t, "the refusal to be reported", func() bool { return count(vat.RefusedMaxConnections) == 1 })
	if n := b.Stats().Inbound; n != 2 {
		t.Errorf("b holds %d inbound connections, want 2", n)
	}

	// Slots come back when connections end; their failed handshakes are
	// refusals too.
	for _, c := range held {
		c.Close()
	}
	waitFor(t, "the held connections to be refused", func() bool { return count(vat.RefusedHandshake) == 2 })
	if n := b.Stats().Inbound; n != 0 {
		t.Errorf("b holds %d inbound connections after they ended, want 0", n)
	}
	a := startVat(t, vat.Config{})
	c, err := a.MustImport(uri).Connect(ctx)
	if err != nil {
		t.Fatalf("Connect with free slots: %v", err)
	}
	defer c.Release()
	if got, err := call(ctx, c, "x"); err != nil || got != "b:x" {
		t.Errorf("call = %q, %v", got, err)
	}
}
