package vat_test

import (
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/vatcar/vatcar/vat"
)

// reasons records what a vat's OnRefused hook is told.
type reasons struct {
	mu  sync.Mutex
	got map[string]int
}

func (r *reasons) on(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.got == nil {
		r.got = map[string]int{}
	}
	r.got[reason]++
}

func (r *reasons) count(reason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.got[reason]
}

// floodBootstraps sends Bootstrap messages on raw until a write fails,
// reading nothing; it returns how many it sent.
func floodBootstraps(raw net.Conn, max int) int {
	enc := capnp.NewEncoder(raw)
	for i := range max {
		msg, seg := capnp.NewMultiSegmentMessage(nil)
		m, _ := rpccp.NewRootMessage(seg)
		b, _ := m.NewBootstrap()
		b.SetQuestionId(uint32(i))
		if err := enc.Encode(msg); err != nil {
			return i
		}
	}
	return max
}

// floodEchoes sends level 3 messages (Provide) of 64 KiB on raw until a
// write fails, reading nothing: the vat echoes each back whole as
// Unimplemented. It returns how many it sent.
func floodEchoes(raw net.Conn) int {
	enc := capnp.NewEncoder(raw)
	for i := 0; ; i++ {
		msg, seg := capnp.NewMultiSegmentMessage(nil)
		m, _ := rpccp.NewRootMessage(seg)
		p, _ := m.NewProvide()
		p.SetQuestionId(uint32(i))
		d, _ := capnp.NewData(seg, make([]byte, 64<<10))
		_ = p.SetRecipient(d.ToPtr())
		if err := enc.Encode(msg); err != nil {
			return i
		}
	}
}

// TestPeerNotReadingClosed: a peer that sends messages the vat answers
// (level 3 messages, echoed back whole as Unimplemented) and reads none of
// the answers has its connection closed once the vat's writes to it make no
// progress for WriteStallTimeout, reported as RefusedSendQueue; another
// peer's calls pass before and after.
func TestPeerNotReadingClosed(t *testing.T) {
	ctx := testContext(t)
	refused := &reasons{}
	// No heartbeat: it would close the connection too, unreported.
	b, _, uri := hostEcho(t, "b", vat.Config{Insecure: true, MaxAnswers: -1, WriteStallTimeout: 300 * time.Millisecond, HeartbeatInterval: time.Hour, OnRefused: refused.on})
	a := startVat(t, vat.Config{Insecure: true})
	c, err := a.MustImport(uri).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	if got, err := call(ctx, c, "before"); err != nil || got != "b:before" {
		t.Fatalf("call before: %q, %v", got, err)
	}

	addr, _ := b.PublicAddress()
	raw, err := net.Dial("tcp", net.JoinHostPort(addr.Host, strconv.Itoa(addr.Port)))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	sent := make(chan int, 1)
	start := time.Now()
	go func() { sent <- floodEchoes(raw) }()
	var n int
	select {
	case n = <-sent:
	case <-time.After(120 * time.Second):
		t.Fatal("the flooding peer's writes never failed: the vat kept the connection")
	}
	waitFor(t, "the close to be reported", func() bool { return refused.count(vat.RefusedSendQueue) == 1 })
	t.Logf("%d messages of 64 KiB sent before the vat closed the connection, %v after the first", n, time.Since(start).Round(time.Millisecond))
	if got, err := call(testContext(t), c, "after"); err != nil || got != "b:after" {
		t.Fatalf("other peer's call after: %q, %v", got, err)
	}
	if got := refused.count(vat.RefusedAnswerBudget); got != 0 {
		t.Errorf("answer budget reported %d times with no budget", got)
	}
}

// TestUnfinishedCallsRefusedThenClosed: a peer that finishes none of its
// calls (and reads the replies) gets Overloaded exceptions past MaxAnswers
// and has its connection closed at twice that; another peer is served.
func TestUnfinishedCallsRefusedThenClosed(t *testing.T) {
	ctx := testContext(t)
	refused := &reasons{}
	var limitsMu sync.Mutex
	limits := map[string]int{}
	b, _, uri := hostEcho(t, "b", vat.Config{Insecure: true, MaxAnswers: 100, OnRefused: refused.on, OnLimit: func(r string) {
		limitsMu.Lock()
		defer limitsMu.Unlock()
		limits[r]++
	}})
	addr, _ := b.PublicAddress()
	raw, err := net.Dial("tcp", net.JoinHostPort(addr.Host, strconv.Itoa(addr.Port)))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	// Read the replies meanwhile, counting exceptions.
	type tally struct{ results, overloaded int }
	done := make(chan tally, 1)
	go func() {
		var tl tally
		dec := capnp.NewDecoder(raw)
		for {
			msg, err := dec.Decode()
			if err != nil {
				done <- tl
				return
			}
			m, _ := rpccp.ReadRootMessage(msg)
			if m.Which() == rpccp.Message_Which_return {
				r, _ := m.Return()
				switch r.Which() {
				case rpccp.Return_Which_results:
					tl.results++
				case rpccp.Return_Which_exception:
					if e, _ := r.Exception(); e.Type() == rpccp.Exception_Type_overloaded {
						tl.overloaded++
					}
				}
			}
		}
	}()
	floodBootstraps(raw, 300)
	var tl tally
	select {
	case tl = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the connection was not closed")
	}
	if tl.results != 100 || tl.overloaded != 100 {
		t.Errorf("replies: %d results, %d Overloaded; want 100 and 100", tl.results, tl.overloaded)
	}
	waitFor(t, "the close to be reported", func() bool { return refused.count(vat.RefusedAnswerBudget) == 1 })
	limitsMu.Lock()
	if limits["answers"] != 100 {
		t.Errorf("OnLimit: %v, want 100 answers", limits)
	}
	limitsMu.Unlock()
	a := startVat(t, vat.Config{Insecure: true})
	c, err := a.MustImport(uri).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	if got, err := call(ctx, c, "x"); err != nil || got != "b:x" {
		t.Fatalf("other peer's call: %q, %v", got, err)
	}
}
