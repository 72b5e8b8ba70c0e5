package vat

import (
	"errors"
	"testing"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// rpcMessage builds an rpc Message: a Bootstrap, a Call or a Finish for
// question id.
func rpcMessage(t testing.TB, kind rpccp.Message_Which, id uint32) *capnp.Message {
	t.Helper()
	msg, seg := capnp.NewMultiSegmentMessage(nil)
	m, err := rpccp.NewRootMessage(seg)
	if err != nil {
		t.Fatal(err)
	}
	switch kind {
	case rpccp.Message_Which_bootstrap:
		b, err := m.NewBootstrap()
		if err != nil {
			t.Fatal(err)
		}
		b.SetQuestionId(id)
	case rpccp.Message_Which_call:
		c, err := m.NewCall()
		if err != nil {
			t.Fatal(err)
		}
		c.SetQuestionId(id)
	case rpccp.Message_Which_finish:
		f, err := m.NewFinish()
		if err != nil {
			t.Fatal(err)
		}
		f.SetQuestionId(id)
	}
	return msg
}

// TestAnswerBudget feeds a codec with a budget of 3 the peer's calls and
// finishes: it decodes while at most 3 are unfinished, and refuses the
// fourth, telling its hook.
func TestAnswerBudget(t *testing.T) {
	a, b := tcpPair(t)
	c := newCodec(b, DefaultMaxMessageSize)
	defer c.Close()
	over := 0
	c.maxAnswers, c.overBudget = 3, func() { over++ }
	const (
		boot   = rpccp.Message_Which_bootstrap
		call   = rpccp.Message_Which_call
		finish = rpccp.Message_Which_finish
	)
	seq := []struct {
		kind rpccp.Message_Which
		id   uint32
		ok   bool
	}{
		{boot, 0, true}, {call, 1, true}, {call, 2, true}, // 3 unfinished
		{finish, 0, true}, {call, 3, true}, // still 3
		{finish, 1, true}, {finish, 2, true}, {call, 4, true}, {call, 5, true}, // 3
		{call, 6, false}, // 4: over
	}
	sent := make(chan error, 1)
	go func() {
		enc := capnp.NewEncoder(a)
		for _, s := range seq {
			if err := enc.Encode(rpcMessage(t, s.kind, s.id)); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	for i, s := range seq {
		m, err := c.Decode()
		if s.ok != (err == nil) {
			t.Fatalf("message %d (%v %d): %v, want ok=%v", i, s.kind, s.id, err, s.ok)
		}
		if err == nil {
			m.Release()
		} else if !errors.Is(err, ErrAnswerBudget) {
			t.Errorf("refusal: %v, want ErrAnswerBudget", err)
		}
	}
	if over != 1 {
		t.Errorf("overBudget called %d times, want 1", over)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
}
