package vat_test

import (
	"net"
	"strconv"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/vatcar/vatcar/vat"
)

// TestInsecureOversizeFirstMessage: on an insecure inbound
// connection the handshake read deadline is lifted by the first message
// Decode returns without error. An oversize first message (an
// *engine.MessageTooLarge, which the engine answers and goes on) leaves it
// set, so the connection dies at HandshakeTimeout although the peer is
// answered and keeps talking.
func TestInsecureOversizeFirstMessage(t *testing.T) {
	const hs = 500 * time.Millisecond
	b, _, _ := hostEcho(t, "b", vat.Config{Insecure: true, HandshakeTimeout: hs, MaxMessageSize: 64 << 10, HeartbeatInterval: time.Hour})
	addr, _ := b.PublicAddress()
	raw, err := net.Dial("tcp", net.JoinHostPort(addr.Host, strconv.Itoa(addr.Port)))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	enc := capnp.NewEncoder(raw)
	dec := capnp.NewDecoder(raw)
	// An oversize Call, question 0, as the first message.
	msg, seg := capnp.NewMultiSegmentMessage(nil)
	m, _ := rpccp.NewRootMessage(seg)
	call, _ := m.NewCall()
	call.SetQuestionId(0)
	tgt, _ := call.NewTarget()
	tgt.SetImportedCap(0)
	p, _ := call.NewParams()
	d, _ := capnp.NewData(seg, make([]byte, 256<<10))
	_ = p.SetContent(d.ToPtr())
	if err := enc.Encode(msg); err != nil {
		t.Fatal(err)
	}
	rm, err := dec.Decode()
	if err != nil {
		t.Fatalf("no answer to the oversize call: %v", err)
	}
	root, _ := rpccp.ReadRootMessage(rm)
	t.Logf("answer: %v", root.Which())
	// Nothing else for a while (the peer is thinking), then a Bootstrap.
	time.Sleep(2 * hs)
	bm, bseg := capnp.NewMultiSegmentMessage(nil)
	bmm, _ := rpccp.NewRootMessage(bseg)
	bs, _ := bmm.NewBootstrap()
	bs.SetQuestionId(1)
	if err := enc.Encode(bm); err != nil {
		t.Fatalf("bootstrap after the oversize call: %v", err)
	}
	raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		rm, err := dec.Decode()
		if err != nil {
			t.Fatalf("connection lost after an answered oversize first message: %v", err)
		}
		root, _ := rpccp.ReadRootMessage(rm)
		if root.Which() == rpccp.Message_Which_return {
			return
		}
		if root.Which() == rpccp.Message_Which_abort {
			e, _ := root.Abort()
			r, _ := e.Reason()
			t.Fatalf("aborted: %s", r)
		}
	}
}
