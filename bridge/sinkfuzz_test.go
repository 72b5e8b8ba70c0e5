package bridge

import (
	"testing"

	"capnproto.org/go/capnp/v3"

	"github.com/vatcar/vatcar/proto/captp"
)

// FuzzSinkSend feeds a Sink a peer's arbitrary send parameters, twice,
// then a close naming some count of sends: whatever the bytes, it never
// panics, every message it delivers is within the size limit, and a close
// naming a count other than the sends received (or 0) loses the direction
// instead of ending it.
func FuzzSinkSend(f *testing.F) {
	for _, chunks := range [][]string{{"a", "bb"}, {"x+", "y"}, {"", "z"}} {
		_, msg := sinkSendParams(chunks...)
		b, err := msg.Marshal()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, uint64(2))
	}
	const maxMsg = 1 << 10
	f.Fuzz(func(t *testing.T, data []byte, named uint64) {
		k := &lostTarget{}
		s := &sinkServer{t: k, maxMsg: maxMsg, maxMD: DefaultMaxMetadataSize}
		for range 2 {
			msg, err := capnp.Unmarshal(data)
			if err != nil {
				return
			}
			msg.ResetReadLimit(1 << 20)
			p, err := captp.ReadRootSink_send_Params(msg)
			if err != nil {
				return
			}
			_ = s.send(sendCall{&capCall{recv: capnp.Recv{Args: capnp.Struct(p)}}})
		}
		for _, fr := range k.frames {
			if n := fr.data.Len(); n > maxMsg {
				t.Fatalf("delivered a message of %d bytes, limit %d", n, maxMsg)
			}
		}
		failed := s.failed != nil
		err := s.close(sinkCloseOf(t, named))
		switch {
		case failed:
			if err == nil {
				t.Fatal("a failed direction took a close")
			}
		case named != 0 && named != 2:
			if err == nil || k.ended {
				t.Fatalf("close naming %d of 2 sends ended the direction", named)
			}
		}
		for _, fr := range k.frames {
			fr.free()
		}
		s.parts.Free()
	})
}

// sinkSendParams builds Sink.send parameters of chunks (see sinkSendOf),
// panicking on a failure to build them in memory (fuzz seeds have no T).
func sinkSendParams(chunks ...string) (captp.Sink_send_Params, *capnp.Message) {
	msg, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		panic(err)
	}
	p, err := captp.NewRootSink_send_Params(seg)
	if err != nil {
		panic(err)
	}
	l, err := p.NewChunks(int32(len(chunks)))
	if err != nil {
		panic(err)
	}
	for i, c := range chunks {
		d, more := c, false
		if n := len(c); n > 0 && c[n-1] == '+' {
			d, more = c[:n-1], true
		}
		l.At(i).SetEnd(!more)
		if err := l.At(i).SetData([]byte(d)); err != nil {
			panic(err)
		}
	}
	return p, msg
}
