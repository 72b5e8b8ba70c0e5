package bridge

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"

	"capnproto.org/go/capnp/v3/exc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// unknownServiceID is what a vat's Restorer answers for an unknown sturdy ref.
const unknownServiceID = "Unknown persistent service ID"

// noRestorer is what a vat without a Restorer answers to every restore.
const noRestorer = "This vat has no restorer"

// statusOK is the OK status, shared: a *status.Status is never changed
// (its methods return copies).
var statusOK = status.New(codes.OK, "")

// Status maps an error from a CapTP call, a director or the bridge itself to
// the gRPC status the client sees. It is the bridge's one error funnel:
//
//   - nil -> OK; an error that already carries a gRPC status -> unchanged;
//   - context.Canceled -> CANCELED, context.DeadlineExceeded -> DEADLINE_EXCEEDED;
//   - a capnp Disconnected exception, a closed connection, io.EOF or a
//     network error -> UNAVAILABLE;
//   - a capnp Overloaded exception -> RESOURCE_EXHAUSTED;
//   - a capnp Unimplemented exception -> UNIMPLEMENTED;
//   - a failure whose text has "Unknown persistent service ID" or "This vat
//     has no restorer" -> NOT_FOUND with that text; one whose text has
//     RefusedByCaveat -> PERMISSION_DENIED;
//   - ErrMessageTooLarge and ErrMetadataTooLarge -> RESOURCE_EXHAUSTED,
//     ErrStreamLost -> UNAVAILABLE; ErrInvalidMetadata (or its text, from
//     an egress across CapTP) -> INVALID_ARGUMENT;
//   - anything else -> UNKNOWN with the error's text.
func Status(err error) *status.Status {
	if err == nil {
		return statusOK
	}
	if st, ok := grpcStatus(err); ok {
		return st
	}
	msg := err.Error()
	switch {
	case errors.Is(err, context.Canceled):
		return status.New(codes.Canceled, msg)
	case errors.Is(err, context.DeadlineExceeded):
		return status.New(codes.DeadlineExceeded, msg)
	case errors.Is(err, ErrMessageTooLarge), errors.Is(err, ErrMetadataTooLarge):
		return status.New(codes.ResourceExhausted, msg)
	case errors.Is(err, ErrStreamLost):
		return status.New(codes.Unavailable, msg)
	case errors.Is(err, ErrBadReply):
		return status.New(codes.Internal, msg)
	case errors.Is(err, ErrInvalidMetadata), strings.Contains(msg, ErrInvalidMetadata.Error()):
		return status.New(codes.InvalidArgument, msg)
	}
	var e *exc.Exception
	if errors.As(err, &e) {
		switch e.Type {
		case exc.Disconnected:
			return status.New(codes.Unavailable, msg)
		case exc.Overloaded:
			return status.New(codes.ResourceExhausted, msg)
		case exc.Unimplemented:
			return status.New(codes.Unimplemented, msg)
		}
	}
	if strings.Contains(msg, unknownServiceID) || strings.Contains(msg, noRestorer) {
		return status.New(codes.NotFound, msg)
	}
	if strings.Contains(msg, RefusedByCaveat) {
		return status.New(codes.PermissionDenied, msg)
	}
	var ne net.Error
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || errors.As(err, &ne) {
		return status.New(codes.Unavailable, msg)
	}
	return status.New(codes.Unknown, msg)
}

// grpcStatus returns the gRPC status err carries, if any (directly or
// wrapped).
func grpcStatus(err error) (*status.Status, bool) {
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		if st := se.GRPCStatus(); st != nil {
			return st, true
		}
	}
	return nil, false
}
