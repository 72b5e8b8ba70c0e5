package engine_test

import (
	"testing"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/vatcar/vatcar/vat/engine"
)

// FuzzReadMessageTooLarge feeds arbitrary first-segment prefixes (what the
// codec keeps of a message over the limit) to ReadMessageTooLarge: no
// panic, and an id is reported only for a message that says it is a Call,
// a Bootstrap or a Return with that id in the prefix.
func FuzzReadMessageTooLarge(f *testing.F) {
	f.Add(make([]byte, 64))
	f.Add([]byte{0, 0, 0, 0, 1, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 3, 0, 3, 0})
	for _, build := range []func(rpccp.Message){
		func(m rpccp.Message) { c, _ := m.NewCall(); c.SetQuestionId(7) },
		func(m rpccp.Message) { b, _ := m.NewBootstrap(); b.SetQuestionId(8) },
		func(m rpccp.Message) { r, _ := m.NewReturn(); r.SetAnswerId(9) },
	} {
		_, seg, _ := capnp.NewMessage(capnp.SingleSegment(nil))
		m, _ := rpccp.NewRootMessage(seg)
		build(m)
		f.Add(seg.Data())
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1024 {
			data = data[:1024]
		}
		data = data[:len(data)&^7]
		e := &engine.MessageTooLarge{Size: 1 << 20, Limit: 1 << 10}
		engine.ReadMessageTooLarge(e, data)
		if !e.Known {
			if e.ID != 0 {
				t.Fatalf("id %d reported for an unknown message", e.ID)
			}
			return
		}
		switch e.Which {
		case rpccp.Message_Which_call, rpccp.Message_Which_bootstrap, rpccp.Message_Which_return:
		default:
			if e.ID != 0 {
				t.Fatalf("id %d reported for a %v", e.ID, e.Which)
			}
		}
	})
}
