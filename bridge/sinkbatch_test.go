package bridge

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"capnproto.org/go/capnp/v3"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/vatcar/vatcar/proto/captp"
)

// keepTarget keeps the frames it is given (as gRPC does until it has
// written them) and fails the message numbered failAt (from 1; 0: none).
type keepTarget struct {
	frames []*frame
	failAt int
}

func (k *keepTarget) header(metadata.MD) error { return nil }
func (k *keepTarget) message(f *frame) error {
	if len(k.frames)+1 == k.failAt {
		f.free()
		return errors.New("target failed")
	}
	k.frames = append(k.frames, f)
	return nil
}
func (k *keepTarget) end(*status.Status, metadata.MD) {}
func (k *keepTarget) lost(error)                      {}

func (k *keepTarget) got() []string {
	var out []string
	for _, f := range k.frames {
		out = append(out, string(f.data.Materialize()))
	}
	return out
}

// sinkSendOf builds a Sink.send call of chunks; a chunk ending in "+" is
// not the end of its message. It returns the call and its message.
func sinkSendOf(t *testing.T, chunks ...string) (sendCall, *capnp.Message) {
	t.Helper()
	p, msg := sinkSendParams(chunks...)
	return sendCall{&capCall{recv: capnp.Recv{Args: capnp.Struct(p)}}}, msg
}

// scribble overwrites every byte of msg's segments, as reuse of its
// buffer after the call would.
func scribble(t *testing.T, msg *capnp.Message) {
	t.Helper()
	for i := range msg.NumSegments() {
		seg, err := msg.Segment(capnp.SegmentID(i))
		if err != nil {
			t.Fatal(err)
		}
		d := seg.Data()
		for j := range d {
			d[j] = 0xff
		}
	}
}

// TestSinkSendBatches: a send of whole messages (one copy for the batch,
// split per message) and sends mixing parts and whole messages deliver
// every message, in order, with its own bytes, none of them backed by
// the capnp message (overwritten once the send returns, as its buffer is
// reused).
func TestSinkSendBatches(t *testing.T) {
	big := strings.Repeat("z", 3000) // over gRPC's 1 KiB pooling threshold
	for _, tc := range []struct {
		name   string
		chunks []string
		want   []string
	}{
		{"whole", []string{"a", "bb", "ccc", big, "d"}, []string{"a", "bb", "ccc", big, "d"}},
		{"one", []string{"solo"}, []string{"solo"}},
		{"parts", []string{"a", "b+", "c", "dd"}, []string{"a", "bc", "dd"}},
		{"empty message", []string{"a", "", "b"}, []string{"a", "", "b"}},
		{"open part", []string{"a", "b", "c+"}, []string{"a", "b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := &keepTarget{}
			s := &sinkServer{t: k, maxMsg: 1 << 20, maxMD: DefaultMaxMetadataSize}
			call, msg := sinkSendOf(t, tc.chunks...)
			if err := s.send(call); err != nil {
				t.Fatalf("send: %v", err)
			}
			scribble(t, msg)
			if got := k.got(); fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("delivered %q, want %q", got, tc.want)
			}
			for _, f := range k.frames {
				f.free()
			}
			s.parts.Free()
		})
	}
}

// TestSinkSendBatchTargetFails: a target that fails the second message of
// a batch ends the direction: the send fails, the first message stays
// delivered, later sends are refused.
func TestSinkSendBatchTargetFails(t *testing.T) {
	k := &keepTarget{failAt: 2}
	s := &sinkServer{t: k, maxMsg: 1 << 20, maxMD: DefaultMaxMetadataSize}
	call, _ := sinkSendOf(t, "a", strings.Repeat("b", 2000), "c")
	if err := s.send(call); err == nil || !strings.Contains(err.Error(), "target failed") {
		t.Fatalf("send: %v, want the target's error", err)
	}
	if got := k.got(); fmt.Sprint(got) != "[a]" {
		t.Errorf("delivered %q, want [a]", got)
	}
	call, _ = sinkSendOf(t, "d", "e")
	if err := s.send(call); err == nil {
		t.Error("a send after the target failed was taken")
	}
	for _, f := range k.frames {
		f.free()
	}
}

// TestSinkSendBatchTooLarge: a batch with a message over the limit fails
// as too large, as before batching.
func TestSinkSendBatchTooLarge(t *testing.T) {
	k := &keepTarget{}
	s := &sinkServer{t: k, maxMsg: 10, maxMD: DefaultMaxMetadataSize}
	call, _ := sinkSendOf(t, "a", strings.Repeat("b", 11))
	if err := s.send(call); !errors.Is(err, ErrMessageTooLarge) {
		t.Fatalf("send: %v, want ErrMessageTooLarge", err)
	}
	for _, f := range k.frames {
		f.free()
	}
}

// sinkCloseOf builds a Sink.close call naming sends.
func sinkCloseOf(t *testing.T, sends uint64) closeCall {
	t.Helper()
	_, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		t.Fatal(err)
	}
	p, err := captp.NewRootSink_close_Params(seg)
	if err != nil {
		t.Fatal(err)
	}
	p.SetSends(sends)
	return closeCall{&capCall{recv: capnp.Recv{Args: capnp.Struct(p)}}}
}

// TestSinkCloseCountsSends: a close naming more sends than reached the Sink
// (one refused on the way, before the Sink saw it) fails the direction as
// lost instead of ending it whole; a close naming as many, or none (an
// older sender), ends it.
func TestSinkCloseCountsSends(t *testing.T) {
	for _, tc := range []struct {
		named uint64
		whole bool
	}{{2, true}, {0, true}, {3, false}} {
		t.Run(fmt.Sprint(tc.named), func(t *testing.T) {
			k := &lostTarget{}
			s := &sinkServer{t: k, maxMsg: 1 << 20, maxMD: DefaultMaxMetadataSize}
			for _, m := range []string{"a", "b"} {
				call, _ := sinkSendOf(t, m)
				if err := s.send(call); err != nil {
					t.Fatalf("send: %v", err)
				}
			}
			err := s.close(sinkCloseOf(t, tc.named))
			if tc.whole {
				if err != nil || !k.ended || k.lostErr != nil {
					t.Errorf("close naming %d of 2 sends: %v, ended %v, lost %v; want ended", tc.named, err, k.ended, k.lostErr)
				}
			} else if !errors.Is(err, ErrStreamLost) || k.ended || !errors.Is(k.lostErr, ErrStreamLost) {
				t.Errorf("close naming 3 of 2 sends: %v, ended %v, lost %v; want lost", err, k.ended, k.lostErr)
			}
			for _, f := range k.frames {
				f.free()
			}
		})
	}
}

// lostTarget is a keepTarget that records the direction's end or loss.
type lostTarget struct {
	keepTarget
	ended   bool
	lostErr error
}

func (l *lostTarget) end(*status.Status, metadata.MD) { l.ended = true }
func (l *lostTarget) lost(err error)                  { l.lostErr = err }
