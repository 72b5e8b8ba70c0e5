package bridge

import (
	"context"
	"fmt"
	"sync/atomic"

	"capnproto.org/go/capnp/v3"
	"google.golang.org/grpc/mem"

	"github.com/vatcar/vatcar/proto/captp"
	"github.com/vatcar/vatcar/vat/engine"
)

// Sizes of what one Sink call carries. A gRPC message larger than chunkSize
// is split into chunks; one send carries at most batchBytes of chunks, so a
// capnp message stays below the vat's decode limit (the sidecar's is
// --max-message-size plus room for metadata; an oversize message fails its
// call). go-capnp builds a call's message
// under its connection's one lock, so a batch is kept to 1 MiB: copying it
// holds up the connection's other calls for well under a millisecond.
const (
	chunkSize  = 1 << 20
	batchBytes = 1 << 20
	// batchLimit is what one send may carry, counting chunkOverhead per
	// chunk: batchBytes of data plus room for the chunks' overhead.
	batchLimit = batchBytes + batchBytes/64
	// inlineMax is the largest request or response message carried in a
	// unary call's parameters or reply (the request is copied under the
	// connection lock too).
	inlineMax = batchBytes
	// flowWindow bounds the bytes of one Sink's sends in flight (per stream
	// and direction; see window); a send larger than it may go when no
	// other is in flight.
	flowWindow = 12 << 20
	// maxSendsInFlight bounds the Sink.send calls of one sender in flight,
	// whatever their size: each is an answer the receiving vat holds until
	// it returns, and a connection's answers are bounded for all its calls
	// together (vat MaxAnswers, 32,768 by default). Without it a stalled
	// stream of tiny messages held 35,746 (12 MiB at 352 bytes each) and
	// every other call on the connection was refused. Batching takes over
	// when the bound is reached: the messages queued meanwhile ride in the
	// next send.
	maxSendsInFlight = 256
	// queueBytes bounds the message bytes one direction of a stream holds
	// before the gRPC reader blocks (plus one message of any size).
	queueBytes = 4 << 20
)

// sizeHintMin is the size of params from which a call tells the engine how
// large they will be (engine.WithSizeHint): it then builds them in one
// buffer instead of growing one step by step.
const sizeHintMin = 8 << 10

// sinkSend is Sink.send's method id (bridge.capnp: send @1).
const sinkSend = 1

// sinkSendMethod is Sink.send, and sinkSendSize the size of its params.
var (
	sinkSendMethod = captp.Sink_Methods(nil, nil)[sinkSend].Method
	sinkSendSize   = capnp.ObjectSize{PointerCount: 1}
)

// LazyReturn is the vat.Config.LazyReturn for a vat that carries bridged
// calls: the Return of a Sink.send (a capnp streaming call, `-> stream`)
// only acknowledges the batch to the sender's flow window (flowWindow, far
// more than a few milliseconds of sends), so it may ride with the
// connection's next message instead of costing a write of its own.
func LazyReturn(interfaceID uint64, methodID uint16) bool {
	return interfaceID == captp.Sink_TypeID && methodID == sinkSend
}

// sender writes the events of one outbox to a Sink: headers and close as
// they come, messages in batches. The first message goes out at once; the
// messages queued while a send is being made ride in the next one. There is
// no timer.
//
// A batch goes out as engine.SendDirect when the Sink is a plain import of
// the engine, else as a normal call (a Sink pipelined on open's results
// until open returns, a local Sink). Either way win bounds the bytes in
// flight and keeps the first failure, reported by the next send and by
// close. The sink must have no go-capnp flow limiter: a sender's window
// bounds its sends, and a Sink with a limiter would not take the engine's
// direct path (engine.SendDirect).
type sender struct {
	sink     captp.Sink
	ob       *outbox
	stats    *sendStats // optional
	win      window
	sends    uint64                   // Sink.send calls made, named by close
	releases []capnp.ReleaseFunc      // of headers calls, run when the sender ends
	piece    []piece                  // pending chunks of the next send
	out      batch                    // the send being made
	place    func(capnp.Struct) error // out.place
	release  func(int, error)         // win.release, a direct send's done
	batched  int                      // bytes in piece
	// target is sink's import once a send found it one (the direct
	// path): later sends take no snapshot of sink to find it. Released
	// when run returns.
	target engine.DirectTarget
}

// sendStats counts what a sender did; safe for concurrent reads.
type sendStats struct {
	sends    atomic.Int64 // Sink.send calls
	direct   atomic.Int64 // of which took the direct path
	messages atomic.Int64 // messages completed by them
}

// piece is a part of a queued message that one chunk carries.
type piece struct {
	ev       *event
	off, len int
	end      bool
}

// run sends until it has sent the end event (and its close call returned),
// ctx ends, or a call fails. It does not release the sink.
func (s *sender) run(ctx context.Context) error {
	defer func() {
		s.target.Release()
		for _, r := range s.releases {
			r()
		}
	}()
	for {
		evs := s.ob.take(ctx)
		if evs == nil {
			return ctx.Err()
		}
		end, err := s.sendAll(ctx, evs)
		if err != nil || end {
			return err
		}
		s.ob.recycle(evs) // sent and freed: the batch holds no piece of them
	}
}

// sendAll sends evs, taking ownership of them.
func (s *sender) sendAll(ctx context.Context, evs []event) (end bool, err error) {
	defer func() {
		for i := range evs {
			evs[i].msg.free()
		}
	}()
	for i := range evs {
		ev := &evs[i]
		switch ev.kind {
		case evHeaders:
			if err := s.flush(ctx); err != nil {
				return false, err
			}
			_, release := s.sink.Headers(ctx, func(p captp.Sink_headers_Params) error {
				return writeHeaders(ev.md, keepForward, p.NewMd)
			})
			s.releases = append(s.releases, release)
		case evMsg:
			n := ev.size()
			for off := 0; off < n || off == 0; off += chunkSize {
				l := min(chunkSize, n-off)
				if s.batched+l+chunkOverhead > batchLimit {
					if err := s.flush(ctx); err != nil {
						return false, err
					}
				}
				s.piece = append(s.piece, piece{ev: ev, off: off, len: l, end: off+l == n})
				s.batched += l + chunkOverhead
			}
		case evEnd:
			if err := s.flush(ctx); err != nil {
				return false, err
			}
			return true, s.close(ctx, ev)
		}
	}
	return false, s.flush(ctx)
}

// flush sends the pending pieces as one batch.
func (s *sender) flush(ctx context.Context) error {
	if len(s.piece) == 0 {
		return nil
	}
	pieces := s.piece
	// s.batched counts chunkOverhead per chunk (its struct, list entry and
	// padding): with the list's own words, the params fit in the hint, and
	// the engine builds the call in one buffer of that size. The window
	// counts that and sinkCallOverhead more (the Call's own words, and what
	// the far Sink counts per call held), so a far Sink holding every send
	// in flight stays within its sinkQueueMax.
	hint, size := 0, s.batched+64+sinkCallOverhead
	if s.batched >= sizeHintMin {
		hint = s.batched + 64
	}
	s.piece, s.batched = s.piece[:0], 0
	if err := s.win.acquire(ctx, size); err != nil {
		return fmt.Errorf("send on stream: %w", err)
	}
	if s.place == nil {
		// Bound once: no closure per send. The send's size travels
		// as SendDirect's tag.
		s.place, s.release = s.out.place, s.win.release
	}
	s.out.pieces = pieces
	s.out.copied, s.out.ends = 0, 0
	if !s.target.Valid() {
		s.target, _ = engine.NewDirectTarget(capnp.Client(s.sink))
	}
	direct := s.target.Valid()
	var err error
	if direct {
		err = s.target.Send(sinkSendMethod, sinkSendSize, s.place, hint, s.release, size)
	}
	switch {
	case direct && err != nil: // nothing sent: done never runs
		s.win.release(size, nil)
	case !direct:
		s.sendNormal(ctx, s.place, hint, size)
		s.sends++
	default:
		s.sends++
	}
	// Both paths place the params before they return.
	copied, ends := s.out.copied, s.out.ends
	s.out.pieces = nil
	s.ob.done(copied)
	if s.stats != nil {
		s.stats.sends.Add(1)
		s.stats.messages.Add(int64(ends))
		if direct {
			s.stats.direct.Add(1)
		}
	}
	if err != nil {
		return fmt.Errorf("send on stream: %w", err)
	}
	return nil
}

// batch is what one send carries, and what placing it copied.
type batch struct {
	pieces []piece
	copied int // bytes of cost, as the outbox counts them
	ends   int // messages completed
}

// place fills a send's params with b.pieces. It runs again if the params
// outgrow the size hint (see engine.WithSizeHint).
func (b *batch) place(st capnp.Struct) error {
	b.copied, b.ends = 0, 0
	l, err := captp.Sink_send_Params(st).NewChunks(int32(len(b.pieces)))
	if err != nil {
		return err
	}
	for i, pc := range b.pieces {
		c := l.At(i)
		c.SetEnd(pc.end)
		b.copied += pc.len
		if pc.end {
			b.ends++
			b.copied += chunkOverhead // as counted by the outbox
		}
		if pc.len == 0 {
			continue
		}
		d, err := capnp.NewUInt8List(c.Segment(), int32(pc.len))
		if err != nil {
			return err
		}
		copyRange(d.ToPtr().Data(), pc.ev.msg.data, pc.off)
		if err := capnp.Struct(c).SetPtr(0, d.ToPtr()); err != nil {
			return err
		}
	}
	return nil
}

// sendNormal sends a batch (size bytes in the window) through go-capnp's
// client: a goroutine waits for its Return, as SendStreamCall's does. A
// failure is reported by a later send.
func (s *sender) sendNormal(ctx context.Context, place func(capnp.Struct) error, hint, size int) {
	if hint > 0 {
		ctx = engine.WithSizeHint(ctx, hint)
	}
	ans, release := capnp.Client(s.sink).SendCall(ctx, capnp.Send{Method: sinkSendMethod, PlaceArgs: place, ArgsSize: sinkSendSize})
	win := &s.win
	go func() {
		_, err := ans.Struct()
		release()
		win.release(size, err)
	}()
}

// close sends the end event: a half-close, or the final status and
// trailers, with the number of sends made before it, and waits for the far
// side to take it and for every send to return. A send refused on the way
// (the receiving vat's limits fail it before the Sink sees it) leaves the
// far Sink with fewer sends than the close names: it fails the direction
// rather than end it whole without that message. (Waiting for the sends
// before the close would cost the lazy Returns' delay, 5 ms, on every
// client stream's half-close.)
func (s *sender) close(ctx context.Context, ev *event) error {
	sends := s.sends
	f, release := s.sink.Close(ctx, func(p captp.Sink_close_Params) error {
		p.SetSends(sends)
		if ev.st == nil {
			return nil
		}
		st, err := p.NewStatus()
		if err != nil {
			return err
		}
		if err := writeStatus(st, ev.st); err != nil {
			return err
		}
		return writeHeaders(ev.md, keepForward, p.NewTrailers)
	})
	defer release()
	if _, err := f.Struct(); err != nil {
		return fmt.Errorf("close stream: %w", err)
	}
	if err := s.win.drain(ctx); err != nil {
		return fmt.Errorf("send on stream: %w", err)
	}
	return nil
}

// copyRange copies bs[off:off+len(dst)] into dst.
func copyRange(dst []byte, bs mem.BufferSlice, off int) {
	for _, b := range bs {
		d := b.ReadOnlyData()
		if off >= len(d) {
			off -= len(d)
			continue
		}
		n := copy(dst, d[off:])
		dst = dst[n:]
		off = 0
		if len(dst) == 0 {
			return
		}
	}
}
