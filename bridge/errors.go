package bridge

import "errors"

// Sentinel errors of the bridge. Calls fail with gRPC statuses (see Status);
// these are the causes they wrap.
var (
	// ErrMessageType is returned by the raw codec for a message of a type
	// other than []byte, *[]byte or the bridge's own frames.
	ErrMessageType = errors.New("bridge: unsupported message type")

	// ErrNoDirector is returned by IngressConfig.Validate when Director is nil.
	ErrNoDirector = errors.New("bridge: ingress needs a Director")

	// ErrNoConn is returned by EgressConfig.Validate when Conn is nil.
	ErrNoConn = errors.New("bridge: egress needs a Conn")

	// ErrMessageSize is returned by Validate for a negative or too large
	// MaxMessageSize.
	ErrMessageSize = errors.New("bridge: invalid max message size")

	// ErrConcurrency is returned by EgressConfig.Validate for a negative
	// MaxConcurrentCalls.
	ErrConcurrency = errors.New("bridge: invalid max concurrent calls")

	// ErrOverloaded is the cause of the Overloaded exception an egress
	// answers when it already runs MaxConcurrentCalls calls.
	ErrOverloaded = errors.New("bridge: too many concurrent calls")

	// ErrMessageTooLarge is the cause of RESOURCE_EXHAUSTED when a message
	// crossing the bridge exceeds MaxMessageSize.
	ErrMessageTooLarge = errors.New("bridge: message larger than the max message size")

	// ErrMetadataTooLarge is the cause of RESOURCE_EXHAUSTED when the
	// metadata (headers or trailers) of a call crossing the bridge exceeds
	// MaxMetadataSize.
	ErrMetadataTooLarge = errors.New("bridge: metadata larger than the max metadata size")

	// ErrInvalidMetadata is the cause of INVALID_ARGUMENT when a call's
	// request metadata has a key or value gRPC cannot send (a key with
	// characters outside [0-9a-z-_.], a non-binary value that is not
	// printable ASCII): only a CapTP peer that is not a vatcar ingress
	// sends such metadata. The status crosses CapTP by its text.
	ErrInvalidMetadata = errors.New("bridge: invalid request metadata")

	// ErrMetadataSize is returned by Validate for a negative or too large
	// MaxMetadataSize.
	ErrMetadataSize = errors.New("bridge: invalid max metadata size")

	// ErrNoDownSink is the cause of the exception an egress answers to a
	// call that brings no Sink for the response.
	ErrNoDownSink = errors.New("bridge: call without a response Sink")

	// ErrAttached is the cause of the exception an egress answers to a
	// second Call.attach.
	ErrAttached = errors.New("bridge: a Sink is already attached to the call")

	// ErrStreamLost is the cause of UNAVAILABLE when the peer dropped a
	// stream without closing it (its connection was lost or it released
	// the stream's Sink).
	ErrStreamLost = errors.New("bridge: stream lost before it was closed")

	// ErrKinds is the cause of ParseKinds's and Kinds.Validate's errors: a
	// descriptor set that cannot be read or names no methods, or a method
	// name or kind that is not valid.
	ErrKinds = errors.New("bridge: invalid method kinds")

	// ErrKindConflict is the cause of the error ParseKinds and Kinds.Merge
	// return for a method described twice with different kinds.
	ErrKindConflict = errors.New("bridge: conflicting kinds for one method")

	// ErrBadReply is the cause of INTERNAL when a unary call's results
	// hold neither a whole reply with its status nor a streamed rest: a
	// peer's Return of empty results (go-capnp v3.1.0-alpha.2 sends one
	// for a call whose handler fails while its connection closes).
	ErrBadReply = errors.New("bridge: malformed reply from the exporting vat")
)
