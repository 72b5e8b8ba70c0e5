package bridge

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/vatcar/vatcar/proto/captp"
)

// target is where a sinkServer delivers one direction of a stream: the
// gRPC side of the call. A sinkServer calls it from one goroutine at a time,
// in the order the peer sent.
type target interface {
	// header delivers response headers.
	header(md metadata.MD) error
	// message delivers one message; the target owns f.
	message(f *frame) error
	// end delivers the end of the direction: st is nil for a half-close.
	end(st *status.Status, trailers metadata.MD)
	// lost reports that the direction ended without end (the peer released
	// the Sink, or its connection is gone), or that it failed with err.
	lost(err error)
}

// sinkServer is the capability side of a Sink: it reassembles chunks into
// messages and hands them to a target. Its calls run one at a time in order
// (sinkHook), which keeps the stream's order and makes a slow target push
// back through capnp flow control.
type sinkServer struct {
	t      target
	maxMsg int
	maxMD  int // metadata limit of headers and trailers

	parts  mem.BufferSlice // chunks of a message in progress
	partsN int
	sends  uint64 // send calls received, failed ones included (close checks)
	failed error  // once set, the direction is over: later sends are refused
}

// newSink returns a Sink that delivers to t, whose calls run on pool's
// workers (nil: a goroutine per drain).
func newSink(t target, maxMsg, maxMD int, pool *workers) captp.Sink {
	return sinkClient(&sinkServer{t: t, maxMsg: maxMsg, maxMD: maxMD}, pool)
}

// headers serves Sink.headers.
func (s *sinkServer) headers(call headersCall) error {
	if s.failed != nil {
		return s.failed
	}
	l, err := call.Args().Md()
	if err != nil {
		return fmt.Errorf("sink headers: %w", err)
	}
	md, err := readHeaders("response headers", l, s.maxMD)
	if err != nil {
		err = fmt.Errorf("sink headers: %w", err)
		if errors.Is(err, ErrMetadataTooLarge) {
			s.fail(err)
		}
		return err
	}
	return s.t.header(md)
}

// send serves Sink.send. It copies each chunk out of the capnp message
// once (capnp memory goes back when the call returns, and gRPC keeps a
// reference to what it sends).
func (s *sinkServer) send(call sendCall) error {
	s.sends++
	if s.failed != nil {
		return s.failed
	}
	l, err := call.Args().Chunks()
	if err != nil {
		return fmt.Errorf("sink send: %w", err)
	}
	if s.parts == nil && l.Len() > 1 {
		if done, err := s.sendWhole(l); done {
			return err
		}
	}
	pool := &bufferPool
	for i := 0; i < l.Len(); i++ {
		c := l.At(i)
		d, err := c.Data()
		if err != nil {
			return fmt.Errorf("sink send: %w", err)
		}
		if s.partsN+len(d) > s.maxMsg {
			err := fmt.Errorf("sink send: %d bytes and more, max %d: %w", s.partsN+len(d), s.maxMsg, ErrMessageTooLarge)
			s.parts.Free()
			s.parts, s.partsN = nil, 0
			s.fail(err)
			return err
		}
		var f *frame
		if c.End() && s.parts == nil && len(d) > 0 { // a whole message in one chunk: the usual case
			f = new(frame)
			f.single(mem.Copy(d, pool))
		} else {
			if len(d) > 0 {
				s.parts = append(s.parts, mem.Copy(d, pool))
				s.partsN += len(d)
			}
			if !c.End() {
				continue
			}
			f = &frame{data: s.parts}
			s.parts, s.partsN = nil, 0
		}
		if err := s.t.message(f); err != nil {
			s.failed = err
			return err
		}
	}
	return nil
}

// sendWhole delivers a send whose chunks are all whole messages (the
// usual batch of a stream of small messages) with one copy into one pooled
// buffer, split into each message's part, and the frames in one array: three
// allocations per batch where a copy per message (mem.Copy: a new buffer
// below gRPC's pooling threshold of 1 KiB, and its interface value) made
// three per message. done is false, with nothing delivered, when a chunk is
// not a whole message (or too large): send then takes its general path.
func (s *sinkServer) sendWhole(l captp.Chunk_List) (done bool, err error) {
	n := l.Len()
	data := make([][]byte, 0, n)
	total := 0
	for i := 0; i < n; i++ {
		c := l.At(i)
		d, err := c.Data()
		if err != nil || !c.End() || len(d) == 0 || len(d) > s.maxMsg {
			return false, nil
		}
		data = append(data, d)
		total += len(d)
	}
	big := bufferPool.Get(total)
	off := 0
	for _, d := range data {
		off += copy((*big)[off:], d)
	}
	rest := mem.NewBuffer(big, &bufferPool)
	frames := make([]frame, n)
	for i, d := range data {
		var part mem.Buffer
		if i == n-1 {
			part = rest
		} else {
			part, rest = mem.SplitUnsafe(rest, len(d))
		}
		frames[i].single(part)
		if err := s.t.message(&frames[i]); err != nil {
			if i < n-1 {
				rest.Free()
			}
			s.failed = err
			return true, err
		}
	}
	return true, nil
}

// close serves Sink.close.
func (s *sinkServer) close(call closeCall) error {
	if s.failed != nil {
		return s.failed
	}
	args := call.Args()
	if n := args.Sends(); n != 0 && n != s.sends {
		// A send was refused before it reached this Sink (the
		// receiving vat's limits): the direction lost a message.
		err := fmt.Errorf("sink close: %d sends made, %d arrived: %w", n, s.sends, ErrStreamLost)
		s.fail(err)
		return err
	}
	var st *status.Status
	if args.HasStatus() {
		w, err := args.Status()
		if err != nil {
			return fmt.Errorf("sink close: %w", err)
		}
		if st, err = readStatus(w); err != nil {
			return fmt.Errorf("sink close: %w", err)
		}
	}
	l, err := args.Trailers()
	if err != nil {
		return fmt.Errorf("sink close: %w", err)
	}
	md, err := readHeaders("trailers", l, s.maxMD)
	if err != nil {
		err = fmt.Errorf("sink close: %w", err)
		if errors.Is(err, ErrMetadataTooLarge) {
			s.fail(err)
		}
		return err
	}
	// The direction is over: a peer that sends more is refused.
	s.failed = errDirectionClosed
	s.t.end(st, md)
	return nil
}

// errDirectionClosed refuses calls on a Sink after its close.
var errDirectionClosed = errors.New("bridge: the stream direction is closed")

// fail ends the direction with err.
func (s *sinkServer) fail(err error) {
	s.failed = err
	s.t.lost(err)
}

// Shutdown is called by sinkHook when the last reference to the Sink is
// gone (after every call on it returned). A Sink's holder keeps it
// until the call ends, even after close (a half-close on up), so the target
// takes this as the end of the call, which matters only if the call has
// not ended otherwise: the peer cancelled, or its connection is gone.
func (s *sinkServer) Shutdown() {
	s.parts.Free()
	s.parts = nil
	s.t.lost(ErrStreamLost)
}
