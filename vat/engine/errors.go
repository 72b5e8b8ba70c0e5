package engine

import (
	"context"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// exceptionError turns a received exception into an error of the same type
// whose text is the peer's reason.
func exceptionError(e rpccp.Exception) error {
	reason, _ := e.Reason()
	t := exc.Type(e.Type())
	if t > exc.Unimplemented {
		t = exc.Failed
	}
	return exc.New(t, "", reason)
}

// setException writes err into e.
func setException(e rpccp.Exception, err error) {
	e.SetType(rpccp.Exception_Type(exc.TypeOf(err)))
	_ = e.SetReason(err.Error())
}

var (
	errTooManyImports = exc.New(exc.Overloaded, "", "too many capabilities imported on this connection")
	errTooManyExports = exc.New(exc.Overloaded, "", "too many capabilities exported on this connection")
	errReturned       = exc.New(exc.Failed, "", "call already returned")
	errReleased       = exc.New(exc.Failed, "", "call released before it returned")
	errNotCap         = exc.New(exc.Failed, "", "pipelined call on a field that is not a capability")
	errNoAnswer       = exc.New(exc.Failed, "", "pipelined call on a question this vat does not hold (unknown, or returned without capabilities)")
	errNoBootstrap    = exc.New(exc.Failed, "", "this vat serves no bootstrap capability")
	errResultsKind    = exc.New(exc.Unimplemented, "", "unsupported kind of Return")
	errSendResultTo   = exc.New(exc.Unimplemented, "", "results may only go to the caller")
)

// readTransform decodes a PromisedAnswer's transform.
func readTransform(pa rpccp.PromisedAnswer) ([]capnp.PipelineOp, error) {
	list, err := pa.Transform()
	if err != nil {
		return nil, err
	}
	if list.Len() == 0 {
		return nil, nil
	}
	ops := make([]capnp.PipelineOp, 0, list.Len())
	for i := 0; i < list.Len(); i++ {
		op := list.At(i)
		if op.Which() == rpccp.PromisedAnswer_Op_Which_getPointerField {
			ops = append(ops, capnp.PipelineOp{Field: op.GetPointerField()})
		}
	}
	return ops, nil
}

// writePromisedAnswer sets pa to question id with transform.
func writePromisedAnswer(pa rpccp.PromisedAnswer, id uint32, transform []capnp.PipelineOp) error {
	pa.SetQuestionId(id)
	if len(transform) == 0 {
		return nil
	}
	list, err := pa.NewTransform(int32(len(transform)))
	if err != nil {
		return err
	}
	for i, op := range transform {
		list.At(i).SetGetPointerField(op.Field)
	}
	return nil
}

// errPipe is the PipelineCaller of a call that failed at once: calls
// pipelined on it fail the same way. (go-capnp's AnswerQueue needs a
// non-nil PipelineCaller from every delivery.)
type errPipe struct{ err error }

func (p errPipe) PipelineSend(ctx context.Context, _ []capnp.PipelineOp, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	return capnp.ErrorAnswer(s.Method, p.err), func() {}
}

func (p errPipe) PipelineRecv(ctx context.Context, _ []capnp.PipelineOp, r capnp.Recv) capnp.PipelineCaller {
	r.Reject(p.err)
	return p
}

// orErrPipe returns pc, or an errPipe if pc is nil.
func orErrPipe(pc capnp.PipelineCaller, err error) capnp.PipelineCaller {
	if pc == nil {
		return errPipe{err}
	}
	return pc
}
