package bridge

// This file is the GrpcService capability's dispatcher (NewEgress): a
// capnp.ClientHook that starts each call's handler on a worker of the
// egress's pool (workers: a parked goroutine, or a new one), straight from
// the CapTP engine's receive loop. go-capnp's
// server.Server, behind the generated GrpcService_ServerToClient, queued
// every call to a serving goroutine that handed over to a new one
// (server.Call.Go) and made an AnswerQueue per call for calls pipelined on
// its results; vatcar's engine queues those itself, so here the queue is
// made only when a caller pipelines through the hook (go-capnp's rpc.Conn,
// a local caller).

import (
	"context"
	"sync"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	"capnproto.org/go/capnp/v3/server"

	"github.com/vatcar/vatcar/proto/captp"
)

// serviceMethods are GrpcService's methods as the generated code describes
// them (names included), indexed by method id.
var serviceMethods = captp.GrpcService_Methods(nil, nil)

// serviceHandlers are the egress's handlers, indexed by method id. Both
// may block: each call runs on a worker of its own, in no order.
var serviceHandlers = [...]func(*egress, context.Context, *capCall) error{
	0: func(e *egress, ctx context.Context, c *capCall) error { return e.unary(ctx, unaryCall{c}) },
	1: func(e *egress, ctx context.Context, c *capCall) error { return e.open(ctx, openCall{c}) },
}

// Result sizes of GrpcService's methods, as the generated AllocResults
// use, and unary's params size, as the generated client's (both checked
// by TestServiceDescriptors).
var (
	unaryParamsSize  = capnp.ObjectSize{PointerCount: 2} // call, request
	unaryResultsSize = capnp.ObjectSize{PointerCount: 2} // reply, rest
	openResultsSize  = capnp.ObjectSize{PointerCount: 1} // up
)

// serviceHook is the capnp.ClientHook of an egress's GrpcService
// capability. It is safe for concurrent use.
type serviceHook struct {
	e *egress
}

// newService returns e's GrpcService capability.
func newService(e *egress) captp.GrpcService {
	return captp.GrpcService(capnp.NewClient(&serviceHook{e: e}))
}

// method returns the method and handler m names, if GrpcService has it.
func (h *serviceHook) method(m capnp.Method) (capnp.Method, func(*egress, context.Context, *capCall) error, bool) {
	return lookupMethod(m, captp.GrpcService_TypeID, serviceMethods, serviceHandlers[:])
}

// lookupMethod returns the method and handler m names among an interface's
// methods (the generated list) and handlers (by method id), if it has it.
func lookupMethod[H any](m capnp.Method, iface uint64, methods []server.Method, handlers []H) (capnp.Method, H, bool) {
	if m.InterfaceID != iface || int(m.MethodID) >= len(handlers) {
		var none H
		return capnp.Method{}, none, false
	}
	return methods[m.MethodID].Method, handlers[m.MethodID], true
}

// Recv implements capnp.ClientHook: the call's handler starts on a worker
// (the caller is the engine's receive loop, which must not block). An
// unknown method fails at once as Unimplemented, as under server.Server;
// the returned PipelineCaller is then nil, which is allowed once the call
// has returned.
func (h *serviceHook) Recv(ctx context.Context, r capnp.Recv) capnp.PipelineCaller {
	_, handle, ok := h.method(r.Method)
	if !ok {
		r.Reject(capnp.Unimplemented("unimplemented"))
		return nil
	}
	return startCall(ctx, r, h.e.pool, h.e, handle)
}

// startCall starts r's handler on one of p's workers (a nil p: a new
// goroutine).
func startCall(ctx context.Context, r capnp.Recv, p *workers, e *egress, handle func(*egress, context.Context, *capCall) error) *capCall {
	c := &serviceCall{capCall: capCall{recv: r}, ctx: ctx, e: e, handle: handle}
	p.start(c)
	return &c.capCall
}

// serviceCall is a GrpcService call as a worker's job: the call and what
// its handler needs, in one allocation.
type serviceCall struct {
	capCall
	ctx    context.Context // cleared once the handler has it
	e      *egress
	handle func(*egress, context.Context, *capCall) error
}

// work implements job: it serves the call. The handler starts on a stack
// grown by growStack (a no-op but for its frame's check when the stack is
// as large already; the garbage collector shrinks the stacks of parked
// workers).
func (c *serviceCall) work() {
	growStack()
	ctx := c.ctx
	c.ctx = nil // the call's context is not kept while its answer is
	c.serve(ctx, c.e, c.handle)
}

// Send implements capnp.ClientHook: a call from this process.
func (h *serviceHook) Send(ctx context.Context, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	m, _, ok := h.method(s.Method)
	return sendAsRecv(ctx, s, m, ok, h.Recv)
}

// sendAsRecv makes a local call to method m (known: ok) a received one, as
// server.Server.Send does: its arguments in a message of their own, its
// results held by a capnp.StructReturner.
func sendAsRecv(ctx context.Context, s capnp.Send, m capnp.Method, ok bool, recv func(context.Context, capnp.Recv) capnp.PipelineCaller) (*capnp.Answer, capnp.ReleaseFunc) {
	if !ok {
		return capnp.ErrorAnswer(s.Method, capnp.Unimplemented("unimplemented")), func() {}
	}
	var args capnp.Struct
	if s.PlaceArgs != nil {
		_, seg, err := capnp.NewMessage(capnp.MultiSegment(nil))
		if err != nil {
			return capnp.ErrorAnswer(m, err), func() {}
		}
		if args, err = capnp.NewRootStruct(seg, s.ArgsSize); err != nil {
			return capnp.ErrorAnswer(m, err), func() {}
		}
		if err := s.PlaceArgs(args); err != nil {
			args.Message().Release()
			return capnp.ErrorAnswer(m, exc.WrapError("place args", err)), func() {}
		}
	}
	ret := new(capnp.StructReturner)
	pc := recv(ctx, capnp.Recv{
		Method: m,
		Args:   args,
		ReleaseArgs: func() { // called once, by capCall.finish
			if msg := args.Message(); msg != nil {
				msg.Release()
			}
		},
		Returner: ret,
	})
	return ret.Answer(m, pc)
}

// Brand implements capnp.ClientHook.
func (h *serviceHook) Brand() capnp.Brand { return capnp.Brand{Value: h} }

// Shutdown implements capnp.ClientHook: the last reference is gone. Calls
// in progress go on; the egress's parked workers end, and busy ones when
// their calls return.
func (h *serviceHook) Shutdown() { h.e.pool.close() }

// String implements capnp.ClientHook.
func (h *serviceHook) String() string { return "bridge.GrpcService" }

// capCall is one call received on a capability the bridge serves, as its
// handler sees it: the handler reads args and calls allocResults at most
// once, and capCall returns the call when the handler does. It is also the
// call's PipelineCaller.
type capCall struct {
	recv    capnp.Recv
	results capnp.Struct // allocResults'; read by settle once done is set
	alloced bool

	mu   sync.Mutex // guards the fields below
	aq   *capnp.AnswerQueue
	done bool  // the handler returned
	err  error // its error, once done
}

// serve runs the call's handler and returns the call. A handler's panic
// is not recovered (as under server.Server): it ends the process.
func (c *capCall) serve(ctx context.Context, e *egress, handle func(*egress, context.Context, *capCall) error) {
	c.finish(handle(e, ctx, c))
}

// finish returns the call, whose handler returned err, as server.Server
// does: the arguments are released, the return prepared, calls pipelined
// on the results delivered, the return sent.
func (c *capCall) finish(err error) {
	c.recv.ReleaseArgs()
	c.recv.Returner.PrepareReturn(err)
	c.mu.Lock()
	c.done, c.err = true, err
	aq := c.aq
	c.mu.Unlock()
	if aq != nil {
		c.settle(aq)
	}
	c.recv.Returner.Return()
	c.recv.Returner.ReleaseResults()
}

// args returns the call's arguments.
func (c *capCall) args() capnp.Struct { return c.recv.Args }

// allocResults allocates the call's results struct, once.
func (c *capCall) allocResults(sz capnp.ObjectSize) (capnp.Struct, error) {
	if c.alloced {
		return capnp.Struct{}, exc.New(exc.Failed, "bridge", "multiple calls to AllocResults")
	}
	c.alloced = true
	var err error
	c.results, err = c.recv.Returner.AllocResults(sz)
	return c.results, err
}

// queue returns the call's answer queue, made by the first pipelined call.
// A queue made after the handler returned is settled at once.
func (c *capCall) queue() *capnp.AnswerQueue {
	c.mu.Lock()
	aq, made := c.aq, false
	if aq == nil {
		aq, made = capnp.NewAnswerQueue(c.recv.Method), true
		c.aq = aq
	}
	done := c.done
	c.mu.Unlock()
	if made && done {
		c.settle(aq)
	}
	return aq
}

// settle delivers the calls queued on aq to the call's results, or fails
// them with its error. The handler has returned.
func (c *capCall) settle(aq *capnp.AnswerQueue) {
	if c.err != nil {
		aq.Reject(c.err)
		return
	}
	aq.Fulfill(c.results.ToPtr())
}

// PipelineRecv implements capnp.PipelineCaller.
func (c *capCall) PipelineRecv(ctx context.Context, transform []capnp.PipelineOp, r capnp.Recv) capnp.PipelineCaller {
	return c.queue().PipelineRecv(ctx, transform, r)
}

// PipelineSend implements capnp.PipelineCaller.
func (c *capCall) PipelineSend(ctx context.Context, transform []capnp.PipelineOp, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	return c.queue().PipelineSend(ctx, transform, s)
}

// unaryCall is a GrpcService.unary call: captp.GrpcService_unary without
// server.Call.
type unaryCall struct{ *capCall }

// Args returns the call's arguments.
func (c unaryCall) Args() captp.GrpcService_unary_Params {
	return captp.GrpcService_unary_Params(c.args())
}

// AllocResults allocates the call's results, once.
func (c unaryCall) AllocResults() (captp.GrpcService_unary_Results, error) {
	r, err := c.allocResults(unaryResultsSize)
	return captp.GrpcService_unary_Results(r), err
}

// openCall is a GrpcService.open call: captp.GrpcService_open without
// server.Call.
type openCall struct{ *capCall }

// Args returns the call's arguments.
func (c openCall) Args() captp.GrpcService_open_Params {
	return captp.GrpcService_open_Params(c.args())
}

// AllocResults allocates the call's results, once.
func (c openCall) AllocResults() (captp.GrpcService_open_Results, error) {
	r, err := c.allocResults(openResultsSize)
	return captp.GrpcService_open_Results(r), err
}
