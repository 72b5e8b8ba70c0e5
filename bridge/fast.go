package bridge

// This file is the fast path of methods known to be unary (see Kinds): the
// ingress reads the request on the gRPC handler's goroutine (recvUnary) and
// the egress makes the backend call on the capnp handler's goroutine
// (unaryKnown), so a call needs no reader goroutine on either side. Anything
// a unary call cannot carry falls back, with what was read, to the general
// path.

import (
	"context"
	"fmt"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"

	"github.com/vatcar/vatcar/vat/engine"
)

// recvUnary reads a unary request on the handler's goroutine: one message
// and the half-close, as grpc-go's unary server does. It returns the
// request, or an error that ends the call, or neither when the call must
// take the general path: the message is too large for a unary call, a
// second one came, or the client half-closed without any (a unary backend
// answers that itself; a method wrongly declared unary still gets its
// empty stream). Then what was read is queued in the outbox, and closed
// reports that it holds the half-close too: nothing is left to read.
func (c *ingressCall) recvUnary() (req *frame, closed bool, err error) {
	f := &c.reqF
	if err := c.ss.RecvMsg(f); err != nil {
		if err == io.EOF {
			c.ob.load(event{kind: evEnd})
			return nil, true, nil
		}
		return nil, false, c.fail(err)
	}
	if f.data.Len() > inlineMax {
		c.ob.load(event{kind: evMsg, msg: *f})
		return nil, false, nil
	}
	g := &c.extraF
	err = c.ss.RecvMsg(g)
	if err == io.EOF {
		return f, true, nil
	}
	if err != nil {
		f.free()
		return nil, false, c.fail(err)
	}
	c.ob.load(event{kind: evMsg, msg: *f}, event{kind: evMsg, msg: *g})
	return nil, false, nil
}

// unaryDesc is the stream description of a known-unary backend call. It
// lets the response stream (so a wrong Kinds entry still works), and it is
// not grpc-go's own unary description, so grpc-go watches the call's
// context and a cancelled call always ends.
var unaryDesc = grpc.StreamDesc{ServerStreams: true}

// unaryKnown answers a unary call to a method known to be unary. The backend
// call runs on this goroutine: the request goes out, then the response is
// read up to its end. A whole response that fits comes back in the reply;
// otherwise (a large message, or more than one) what was read goes to the
// outbox, a reader goroutine takes over, and the caller gets the call to
// attach a Sink to, as on the general path.
func (e *egress) unaryKnown(ctx context.Context, call unaryCall, c *egressCall) error {
	stop := engine.AfterCancel(ctx, c.cancel)
	req, err := call.Args().Request()
	if err != nil {
		stop.Stop()
		c.done()
		return fmt.Errorf("unary: %w", err)
	}
	whole := true
	bs, err := e.conn.NewStream(c.ctx, &unaryDesc, c.head.method, c.callOptions()...)
	if err != nil {
		c.ob.load(event{kind: evEnd, st: Status(err)})
	} else {
		c.sf.single(mem.Copy(req, &bufferPool))
		_ = bs.SendMsg(&c.sf) // a failure's status comes from RecvMsg
		c.sf.free()           // unless gRPC took the buffers (then it is empty)
		whole = c.readUnary(bs)
	}
	if !stop.Stop() || ctx.Err() != nil {
		// The caller cancelled (Finish) while the response was awaited;
		// the cancelled context ends the backend call, and done frees
		// what was read.
		c.done()
		return fmt.Errorf("unary: %w", ctx.Err())
	}
	e.knownUnaryCalls.Add(1)
	if whole {
		return e.replyWhole(call, c, c.ob.poll())
	}
	c.bs = bs
	go c.pumpMessages()
	return e.replyRest(call, c)
}

// readUnary reads a backend's response on the caller's goroutine into the
// outbox (load: it has no consumer yet, and the outbox's first array holds
// the usual reply): headers, then messages until the end, or until it is
// clear the response is no unary reply (a message larger than inlineMax,
// or a second one). whole reports that the outbox holds the whole
// response, ending with the status. Headers or trailers over the metadata
// limit end the call with RESOURCE_EXHAUSTED (headers: the backend call is
// cancelled).
func (c *egressCall) readUnary(bs grpc.ClientStream) (whole bool) {
	if md, _ := bs.Header(); md != nil {
		if st := c.responseMetadata("response headers", md); st != nil {
			c.cancel()
			c.ob.load(event{kind: evEnd, st: st})
			return true
		}
		c.ob.load(event{kind: evHeaders, md: md})
	}
	for msgs := 0; ; msgs++ {
		if err := bs.RecvMsg(&c.rf); err != nil {
			st := statusOK
			if err != io.EOF {
				st = Status(err)
			}
			trailers := bs.Trailer()
			if bad := c.responseMetadata("trailers", trailers); bad != nil {
				st, trailers = bad, nil
			}
			c.ob.load(event{kind: evEnd, st: st, md: trailers})
			return true
		}
		f := c.rf
		c.rf = frame{}
		c.ob.load(event{kind: evMsg, msg: f})
		if msgs > 0 || f.data.Len() > inlineMax {
			return false
		}
	}
}
