package vat

import (
	"bytes"
	"testing"

	capnp "capnproto.org/go/capnp/v3"
)

// TestAppendFrameMatchesEncoder checks that the codec's own framing is
// byte for byte capnp.Encoder's, for one segment and for several (an odd
// and an even count: the header is padded to a word for the even one), and
// that it appends after what dst holds and allocates nothing.
func TestAppendFrameMatchesEncoder(t *testing.T) {
	for _, segs := range []int{1, 2, 3} {
		msg, seg, err := capnp.NewMessage(capnp.MultiSegment(nil))
		if err != nil {
			t.Fatal(err)
		}
		// Force segments: a Data bigger than what is left each time.
		root, err := capnp.NewStruct(seg, capnp.ObjectSize{PointerCount: 3})
		if err != nil {
			t.Fatal(err)
		}
		if err := msg.SetRoot(root.ToPtr()); err != nil {
			t.Fatal(err)
		}
		for i := 0; msg.NumSegments() < int64(segs) && i < 3; i++ {
			d, err := capnp.NewData(seg, bytes.Repeat([]byte{byte(i + 1)}, 4096<<i))
			if err != nil {
				t.Fatal(err)
			}
			if err := root.SetPtr(uint16(i), d.ToPtr()); err != nil {
				t.Fatal(err)
			}
		}
		if int(msg.NumSegments()) != segs {
			t.Fatalf("built %d segments, want %d", msg.NumSegments(), segs)
		}
		var want bytes.Buffer
		if err := capnp.NewEncoder(&want).Encode(msg); err != nil {
			t.Fatal(err)
		}
		prefix := []byte("xyz")
		got, err := appendFrame(append([]byte(nil), prefix...), msg)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[:len(prefix)], prefix) || !bytes.Equal(got[len(prefix):], want.Bytes()) {
			t.Errorf("%d segments: appendFrame differs from capnp.Encoder (%d vs %d bytes)", segs, len(got)-len(prefix), want.Len())
		}
		dst := make([]byte, 0, len(got))
		if n := testing.AllocsPerRun(10, func() { dst, _ = appendFrame(dst[:0], msg) }); n != 0 {
			t.Errorf("%d segments: appendFrame allocates %v times", segs, n)
		}
		msg.Release()
	}
}
