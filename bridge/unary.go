package bridge

// This file is the unary fast path's reply: the egress gathers a whole
// response when it is at hand and fits (collect, shape, writeReply), and the
// ingress delivers it (reply).

import (
	"context"
	"fmt"
	"runtime"

	"capnproto.org/go/capnp/v3"
	"google.golang.org/grpc/mem"

	"github.com/vatcar/vatcar/proto/captp"
)

// collect gathers the backend's response for a unary reply. It waits for the
// first event, then lets what arrives queue while the reading goroutine
// keeps up (yielding to it, never waiting on a timer), and takes it all at
// once (in the outbox's first array: no allocation). whole is true when
// evs is the whole response and fits a reply: optional headers, at most
// one message of at most inlineMax bytes, and the end.
func (c *egressCall) collect(ctx context.Context) (evs []event, whole bool) {
	if !c.ob.wait(ctx) {
		return nil, false
	}
	for seen := 0; ; {
		n, sh := c.ob.peek()
		if sh != shapeMaybe || n == seen {
			break
		}
		seen = n
		runtime.Gosched()
	}
	evs = c.ob.poll()
	return evs, shape(evs) == shapeWhole
}

type replyShape int

const (
	shapeMaybe replyShape = iota // could still become a whole reply
	shapeWhole                   // a whole reply
	shapeNever                   // cannot be a reply
)

// shape classifies the events gathered so far.
func shape(evs []event) replyShape {
	msgs := 0
	for i, ev := range evs {
		switch ev.kind {
		case evHeaders:
			if i != 0 {
				return shapeNever
			}
		case evMsg:
			msgs++
			if msgs > 1 || ev.size() > inlineMax {
				return shapeNever
			}
		case evEnd:
			return shapeWhole
		}
	}
	if len(evs) == 0 {
		return shapeNever
	}
	return shapeMaybe
}

// writeReply fills a unary reply from a whole response.
func writeReply(r captp.Reply, evs []event) error {
	for i := range evs {
		ev := &evs[i]
		switch ev.kind {
		case evHeaders:
			if err := writeHeaders(ev.md, keepForward, r.NewHeaders); err != nil {
				return err
			}
		case evMsg:
			d, err := newData(r.Segment(), ev.msg.data)
			if err != nil {
				return fmt.Errorf("encode reply: %w", err)
			}
			if err := capnp.Struct(r).SetPtr(1, d.ToPtr()); err != nil { // message @1
				return fmt.Errorf("encode reply: %w", err)
			}
			r.SetHasMessage(true)
		case evEnd:
			st, err := r.NewStatus()
			if err != nil {
				return fmt.Errorf("encode reply: %w", err)
			}
			if err := writeStatus(st, ev.st); err != nil {
				return err
			}
			return writeHeaders(ev.md, keepForward, r.NewTrailers)
		}
	}
	return nil
}

func freeEvents(evs []event) {
	for i := range evs {
		evs[i].msg.free()
	}
}

// reply delivers a whole response from a unary reply.
func (c *ingressCall) reply(r captp.Reply) error {
	if r.HasHeaders() {
		l, err := r.Headers()
		if err != nil {
			return c.fail(err)
		}
		md, err := readHeaders("response headers", l, c.in.maxMD)
		if err != nil {
			return c.fail(err)
		}
		if err := c.ss.SendHeader(md); err != nil {
			return err
		}
	}
	if r.HasMessage() {
		b, err := r.Message_()
		if err != nil {
			return c.fail(err)
		}
		f := &c.respF
		f.single(mem.Copy(b, &bufferPool))
		if err := c.ss.SendMsg(f); err != nil {
			f.free()
			return err
		}
	}
	l, err := r.Trailers()
	if err != nil {
		return c.fail(err)
	}
	md, err := readHeaders("trailers", l, c.in.maxMD)
	if err != nil {
		return c.fail(err)
	}
	c.ss.SetTrailer(md)
	w, err := r.Status()
	if err != nil {
		return c.fail(err)
	}
	if w.Code() == 0 && !w.HasMessage_() && !w.HasDetails() {
		return nil // OK, the usual end: no status to build
	}
	st, err := readStatus(w)
	if err != nil {
		return c.fail(err)
	}
	return st.Err()
}
