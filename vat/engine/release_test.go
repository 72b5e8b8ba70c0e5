package engine_test

import (
	"sync/atomic"
	"testing"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/vatcar/vatcar/proto/captp"
	"github.com/vatcar/vatcar/vat/engine"
)

// shutdownSink is a Sink that counts its server's shutdowns: the last
// reference to its client went away.
type shutdownSink struct {
	recorder
	shutdowns atomic.Int32
}

func (s *shutdownSink) Shutdown() { s.shutdowns.Add(1) }

// TestScriptExportReleaseCounts: the peer gets the same capability twice.
// The engine does not look capabilities up by identity (the protocol
// allows either; MaxExports bounds the table), so each descriptor is an
// export of its own with one reference. Releasing one keeps the other
// working; releasing the second removes the last reference to the server.
func TestScriptExportReleaseCounts(t *testing.T) {
	sink := &shutdownSink{}
	s, c := newScript(t, engine.Options{Bootstrap: capnp.Client(captp.Sink_ServerToClient(sink))})
	var exports []uint32
	for q := uint32(0); q < 2; q++ {
		s.send(func(m rpccp.Message) {
			b, _ := m.NewBootstrap()
			b.SetQuestionId(q)
		})
		r, _ := s.expect(rpccp.Message_Which_return).Return()
		p, _ := r.Results()
		ct, _ := p.CapTable()
		if ct.Len() != 1 || ct.At(0).Which() != rpccp.CapDescriptor_Which_senderHosted {
			t.Fatalf("bootstrap %d: cap table %v", q, ct)
		}
		exports = append(exports, ct.At(0).SenderHosted())
		s.send(func(m rpccp.Message) {
			f, _ := m.NewFinish()
			f.SetQuestionId(q)
			f.SetReleaseResultCaps(false) // the peer keeps the capability
		})
	}
	poll(t, "both bootstraps finished", func() bool { return c.Stats().Answers == 0 })
	if st := c.Stats(); st.Exports != 2 {
		t.Fatalf("exports %d, want 2", st.Exports)
	}
	release := func(id, n uint32) {
		s.send(func(m rpccp.Message) {
			r, _ := m.NewRelease()
			r.SetId(id)
			r.SetReferenceCount(n)
		})
	}
	release(exports[0], 1)
	s.send(sinkHeadersCall(2, func(t rpccp.MessageTarget) { t.SetImportedCap(exports[1]) }, "a"))
	r, _ := s.expect(rpccp.Message_Which_return).Return()
	if r.Which() != rpccp.Return_Which_results {
		t.Fatalf("call on the export left: %v", r.Which())
	}
	s.send(func(m rpccp.Message) {
		f, _ := m.NewFinish()
		f.SetQuestionId(2)
	})
	poll(t, "one export left", func() bool { st := c.Stats(); return st.Exports == 1 && st.Answers == 0 })
	release(exports[1], 1)
	poll(t, "tables empty", zeroStats(c))
	if n := sink.shutdowns.Load(); n != 0 {
		t.Fatalf("server shut down while the Conn still holds it as its bootstrap")
	}
	c.Close() // the Conn's own reference to its bootstrap goes too
	poll(t, "the server shut down", func() bool { return sink.shutdowns.Load() == 1 })
}

// TestScriptReleaseMoreThanHeld: releasing more references than the peer
// holds is a protocol violation that ends the connection.
func TestScriptReleaseMoreThanHeld(t *testing.T) {
	s, c := newScript(t, engine.Options{Bootstrap: capnp.Client(captp.Sink_ServerToClient(&recorder{}))})
	s.send(func(m rpccp.Message) {
		b, _ := m.NewBootstrap()
		b.SetQuestionId(0)
	})
	r, _ := s.expect(rpccp.Message_Which_return).Return()
	p, _ := r.Results()
	ct, _ := p.CapTable()
	s.send(func(m rpccp.Message) {
		r, _ := m.NewRelease()
		r.SetId(ct.At(0).SenderHosted())
		r.SetReferenceCount(2)
	})
	s.expect(rpccp.Message_Which_abort)
	poll(t, "the conn to end", func() bool {
		select {
		case <-c.Done():
			return true
		default:
			return false
		}
	})
}

// TestScriptImportReleaseCounts: the peer sends the same capability in
// two Returns, so this side holds it twice; once every client of it is
// released, the Releases sent count 2 in all, and the import is gone.
func TestScriptImportReleaseCounts(t *testing.T) {
	s, c := newScript(t, engine.Options{})
	ctx := ctxT(t)
	var clients []capnp.Client
	for i := 0; i < 2; i++ {
		boot := s.bootstrapPeer(ctx, c, 7)
		clients = append(clients, boot)
	}
	poll(t, "one import", func() bool { st := c.Stats(); return st.Imports == 1 && st.Questions == 0 })
	released := uint32(0)
	clients[0].Release()
	clients[1].Release()
	for released < 2 {
		rel, _ := s.expect(rpccp.Message_Which_release).Release()
		if rel.Id() != 7 {
			t.Fatalf("Release of %d, want 7", rel.Id())
		}
		released += rel.ReferenceCount()
	}
	if released != 2 {
		t.Fatalf("released %d references, want 2", released)
	}
	poll(t, "tables empty", zeroStats(c))
}

// TestScriptUnimplementedCallReleasesParams: the peer echoes a Call of
// ours as Unimplemented; the capabilities in its params were never taken,
// so their exports go, and the call fails as Unimplemented.
func TestScriptUnimplementedCallReleasesParams(t *testing.T) {
	s, c := newScript(t, engine.Options{})
	ctx := ctxT(t)
	boot := captp.GrpcService(s.bootstrapPeer(ctx, c, 7))
	defer boot.Release()
	fut, rel := boot.Open(ctx, func(p captp.GrpcService_open_Params) error {
		return p.SetDown(captp.Sink_ServerToClient(&recorder{}))
	})
	defer rel()
	call := s.expect(rpccp.Message_Which_call)
	if st := c.Stats(); st.Exports != 1 {
		t.Fatalf("exports %d with the call in flight, want 1 (its Sink)", st.Exports)
	}
	s.send(func(m rpccp.Message) {
		if err := m.SetUnimplemented(call); err != nil {
			t.Error(err)
		}
	})
	if _, err := fut.Struct(); exc.TypeOf(err) != exc.Unimplemented {
		t.Fatalf("echoed call: %v, want Unimplemented", err)
	}
	poll(t, "the param's export released", func() bool { return c.Stats().Exports == 0 })
}
