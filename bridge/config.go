package bridge

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc"

	"github.com/vatcar/vatcar/proto/captp"
)

// DefaultMaxMessageSize is the largest gRPC message a bridge passes when
// MaxMessageSize is zero: 4 MiB, gRPC's own default.
const DefaultMaxMessageSize = 4 << 20

// MaxMessageSizeLimit is the largest MaxMessageSize a config accepts: 1 GiB.
// Messages travel in chunks, so the limit is memory, not the capnp decoder.
const MaxMessageSizeLimit = 1 << 30

// DefaultTotalCallsFactor sizes EgressConfig.MaxTotalCalls when it is zero:
// that many times MaxConcurrentCalls.
const DefaultTotalCallsFactor = 4

// DefaultMaxMetadataSize is the largest metadata (the headers, or the
// trailers, of one call) a bridge passes when MaxMetadataSize is zero: 64
// KiB, the order of Envoy's 60 KiB. Sizes count as HTTP/2 does: each
// entry's key and value plus 32 bytes.
const DefaultMaxMetadataSize = 64 << 10

// MaxMetadataSizeLimit is the largest MaxMetadataSize a config accepts: 16
// MiB, grpc-go's own limit on a header list it reads.
const MaxMetadataSizeLimit = 16 << 20

// DefaultMaxConcurrentCalls is the egress admission limit when
// MaxConcurrentCalls is zero.
const DefaultMaxConcurrentCalls = 1000

// Director picks the capability a call goes to, from the call's context
// (its incoming metadata, peer, deadline) and its full method name
// ("/pkg.Service/Method"). The ingress takes ownership of the returned
// client and releases it when the call ends: return an AddRef of a client
// you keep (or, with IngressConfig.BorrowedClients, a client you keep valid
// until the call's handler has returned). An error fails the call: an error carrying a gRPC status (from
// google.golang.org/grpc/status) reaches the client as is, any other goes
// through Status. It is called on the call's goroutine, once per call, and
// must be safe for concurrent use.
type Director func(ctx context.Context, fullMethod string) (captp.GrpcService, error)

// IngressConfig configures an Ingress. The zero value of each field but
// Director means the documented default.
type IngressConfig struct {
	// Director picks the capability for each call. Required.
	Director Director
	// BorrowedClients says the Director's clients are lent, not given: the
	// ingress does not release them, and the Director's owner keeps each
	// valid until the call's handler has returned (the sidecar counts its
	// calls on a capability and releases it after the last). That saves a
	// capnp.Client AddRef and Release per call (three to four allocations).
	BorrowedClients bool

	// MaxMessageSize is the largest message, in bytes, the ingress accepts
	// from a client or passes to it; larger ones fail the call with
	// RESOURCE_EXHAUSTED. Zero means DefaultMaxMessageSize; at most
	// MaxMessageSizeLimit.
	MaxMessageSize int

	// MaxMetadataSize is the largest metadata, in bytes counted as HTTP/2
	// does (key + value + 32 per entry), of a client's request or of the
	// headers or trailers coming back over CapTP; larger fails the call
	// with RESOURCE_EXHAUSTED before anything of it crosses the bridge (a
	// request) or reaches the client (a response). Zero means
	// DefaultMaxMetadataSize; at most MaxMetadataSizeLimit.
	MaxMetadataSize int

	// Kinds are the kinds of the methods the ingress may see, typically
	// from ParseKinds. A method known to be KindUnary takes the unary fast
	// path: the request is read on the call's own goroutine (no reader
	// goroutine, no waiting for one to run) and goes out as one
	// GrpcService.unary call. A request larger than a unary call carries,
	// or a second request message (a wrong entry), moves the call to the
	// general path with what was read. Like grpc-go's own unary server,
	// the fast path waits for the client's half-close, so a bidi client
	// that waits for an answer first waits for its deadline on a method
	// wrongly declared unary. Every other method, and every
	// method when Kinds is nil (the default), takes the general path,
	// which carries any kind, exactly as without Kinds.
	Kinds Kinds

	// StreamIdleTimeout, if positive, ends a call on a streaming path (one
	// that went out with GrpcService.open, or whose response streams) on
	// which no message has passed in either direction for that long: the
	// client gets DEADLINE_EXCEEDED "vatcar: stream idle for D
	// (--stream-idle-timeout)" and the capnp call is cancelled. A call
	// that went out as one unary call is not watched (a slow backend is
	// not an idle stream). Zero: streams may idle for as long as their
	// deadline allows.
	StreamIdleTimeout time.Duration

	// OnCapTPFailure, if not nil, is called with the call's context when a
	// call fails because of CapTP (an exception from the capability or its
	// connection, or a lost stream), before its status reaches the client;
	// never for a status the far app returned, whatever its code. A
	// director uses it to drop a capability that broke.
	OnCapTPFailure func(ctx context.Context, err error)

	// OnMessage, if not nil, is called with the size in bytes of each
	// message a server made with ServerOptions or NewServer reads from a
	// client (sent false) or encodes to send to one (sent true), as gRPC
	// decodes or encodes it (uncompressed). It must not block; a metrics
	// counter is what it is for. Nil: sizes go uncounted.
	OnMessage func(sent bool, size int)

	// Logger receives debug logs of failed calls. Nil discards them.
	Logger *slog.Logger
}

// Validate reports the first problem with c.
func (c IngressConfig) Validate() error {
	if c.Director == nil {
		return ErrNoDirector
	}
	if c.StreamIdleTimeout < 0 {
		return fmt.Errorf("stream idle timeout %v: must not be negative", c.StreamIdleTimeout)
	}
	if err := c.Kinds.Validate(); err != nil {
		return err
	}
	if err := validateMetadataSize(c.MaxMetadataSize); err != nil {
		return err
	}
	return validateSize(c.MaxMessageSize)
}

// Caller is who makes a call through the egress, as the backend learns it.
type Caller struct {
	// Peer is the calling vat's key digest, "sha-256:..." (vatcar-peer).
	Peer string
	// Ref is the revocation id of the ref the call came through
	// (vatcar-ref).
	Ref string
	// Check, if not nil, vets a call's full method name before the backend
	// sees it; an error refuses the call with its text (PERMISSION_DENIED
	// when the text has RefusedByCaveat).
	Check func(method string) error
	// Expires, if not zero, ends a call still running at that time
	// (PERMISSION_DENIED).
	Expires time.Time
}

// Metadata keys the egress sets from the Caller; the bridge drops any
// vatcar-* key an app sets.
const (
	MetadataPeer = "vatcar-peer"
	MetadataRef  = "vatcar-ref"
)

// RefusedByCaveat is in the text of every refusal by a narrowed ref's
// caveat; the bridge maps such failures to PERMISSION_DENIED.
const RefusedByCaveat = "narrowed ref refuses this"

// EgressConfig configures an egress (see NewEgress). The zero value of each
// field but Conn means the documented default.
type EgressConfig struct {
	// Conn is the client connection to the local app's gRPC server.
	// Required. The egress does not close it. A stats handler on it (or
	// grpc.EnableTracing) must not keep a payload past its event: the
	// egress reuses the message it receives into (and so does the
	// ingress's server, see Ingress.ServerOptions).
	Conn grpc.ClientConnInterface

	// MaxMessageSize is the largest message, in bytes, passed in either
	// direction; larger ones fail the call with RESOURCE_EXHAUSTED. Zero
	// means DefaultMaxMessageSize; at most MaxMessageSizeLimit.
	MaxMessageSize int

	// MaxConcurrentCalls is how many calls the egress runs at once for one
	// caller (see CallerKey; without it, for all callers together); one
	// more is answered with a capnp Overloaded exception, which the calling
	// ingress turns into RESOURCE_EXHAUSTED. A call counts from its arrival
	// until its response ends, streams included. Zero means
	// DefaultMaxConcurrentCalls.
	MaxConcurrentCalls int

	// CallerKey, if not nil, returns a comparable key naming the caller of
	// a call from the call's context (typically its CapTP connection, as
	// vat.CallerOf does); calls with equal keys share one caller's
	// MaxConcurrentCalls. It is called once per call and must be safe for
	// concurrent use. Nil: every call is one caller's.
	CallerKey func(ctx context.Context) any

	// MaxTotalCalls bounds the calls of all callers together when
	// CallerKey is set: over it, a call is refused unless its caller holds
	// fewer calls than an equal share of MaxTotalCalls among the callers
	// with calls running, so a new caller gets calls through as long as
	// the callers number at most MaxTotalCalls (see NewSlots for how far
	// past it they may go). Zero means DefaultTotalCallsFactor times
	// MaxConcurrentCalls.
	MaxTotalCalls int

	// OnOverloaded, if not nil, is called for each call the admission
	// refuses (MaxConcurrentCalls, MaxTotalCalls), with perCaller true when
	// the caller held MaxConcurrentCalls (without a CallerKey: always) and
	// false when the callers together held MaxTotalCalls. It must not
	// block; a metrics counter is what it is for. Nil: refusals go uncounted.
	OnOverloaded func(perCaller bool)

	// OnMessage, if not nil, is called with the size in bytes of each
	// message of a backend call the egress encodes to send (sent true) or
	// gRPC decodes from the backend (sent false), uncompressed. It must not
	// block; a metrics counter is what it is for. Nil: sizes go uncounted.
	OnMessage func(sent bool, size int)

	// MaxMetadataSize is the largest metadata, in bytes counted as HTTP/2
	// does (key + value + 32 per entry), of a request arriving over CapTP or
	// of the backend's response headers or trailers; larger fails the call
	// with RESOURCE_EXHAUSTED (a request: before the backend is called; a
	// response: the backend call is cancelled and its metadata dropped).
	// Zero means DefaultMaxMetadataSize; at most MaxMetadataSizeLimit.
	MaxMetadataSize int

	// StreamIdleTimeout, if positive, ends a stream (a call opened with
	// GrpcService.open) on which no message has passed in either direction
	// for that long: the backend call is cancelled and the caller gets
	// DEADLINE_EXCEEDED "vatcar: stream idle for D (--stream-idle-timeout)",
	// which frees its slot (MaxConcurrentCalls). Zero: streams may idle
	// for as long as their deadline allows.
	StreamIdleTimeout time.Duration

	// CallOptions are added to every call made on Conn, after the bridge's
	// own (codec and message sizes).
	CallOptions []grpc.CallOption

	// Caller, if not nil, says who makes a call, from the capnp call's
	// context: the egress checks the call against it first, then replaces
	// the call's vatcar-* metadata with vatcar-peer and vatcar-ref. Nil:
	// calls carry no caller, and vatcar-* keys are still dropped.
	Caller func(ctx context.Context) (Caller, bool)

	// Context, if not nil, bounds every backend call: once it ends, calls
	// in flight are cancelled and new ones fail with its error, as their
	// backend calls would. Backend calls then take their context values
	// from it (none from the capnp call). The sidecar revokes an export's
	// calls this way, at no cost per call beyond the call's own context.
	// Nil: calls end only by their deadline, their caller or their backend.
	Context context.Context

	// Kinds are the kinds of the methods the egress may see, typically
	// from ParseKinds. A GrpcService.unary call to a method known to be
	// KindUnary runs its backend call on the capnp call's own goroutine
	// (no reader goroutine, no hand-off to gather the response). A
	// response too large for the reply, or a second response message (a
	// wrong entry), streams back as on the general path. Every other call,
	// and every call when Kinds is nil (the default), takes the general
	// path, exactly as without Kinds.
	Kinds Kinds

	// Logger receives debug logs of failed calls. Nil discards them.
	Logger *slog.Logger
}

// Validate reports the first problem with c.
func (c EgressConfig) Validate() error {
	if c.Conn == nil {
		return ErrNoConn
	}
	if c.MaxConcurrentCalls < 0 {
		return fmt.Errorf("max concurrent calls %d: %w", c.MaxConcurrentCalls, ErrConcurrency)
	}
	if c.StreamIdleTimeout < 0 {
		return fmt.Errorf("stream idle timeout %v: must not be negative", c.StreamIdleTimeout)
	}
	if c.MaxTotalCalls < 0 {
		return fmt.Errorf("max total calls %d: %w", c.MaxTotalCalls, ErrConcurrency)
	}
	if err := c.Kinds.Validate(); err != nil {
		return err
	}
	if err := validateMetadataSize(c.MaxMetadataSize); err != nil {
		return err
	}
	return validateSize(c.MaxMessageSize)
}

func validateSize(n int) error {
	if n < 0 || n > MaxMessageSizeLimit {
		return fmt.Errorf("max message size %d (limit %d): %w", n, MaxMessageSizeLimit, ErrMessageSize)
	}
	return nil
}

func validateMetadataSize(n int) error {
	if n < 0 || n > MaxMetadataSizeLimit {
		return fmt.Errorf("max metadata size %d (limit %d): %w", n, MaxMetadataSizeLimit, ErrMetadataSize)
	}
	return nil
}

func maxMetadataSize(n int) int {
	if n == 0 {
		return DefaultMaxMetadataSize
	}
	return n
}

func maxMessageSize(n int) int {
	if n == 0 {
		return DefaultMaxMessageSize
	}
	return n
}

func logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
