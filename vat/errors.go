package vat

import (
	"encoding/base64"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

	"capnproto.org/go/capnp/v3/exc"
)

// Exception texts that cross the wire. They are those of OCaml capnp-rpc, and
// the bridge maps exceptions by them, so they must not change.
const (
	unknownServiceText = "Unknown persistent service ID"
	noRestorerText     = "This vat has no restorer"
)

var (
	// ErrUnknownService is returned when a restorer has no service with the
	// requested id. Over the wire it arrives as a capnp exception with the
	// same text; use IsUnknownService to recognise both.
	//lint:ignore ST1005 exact text of OCaml capnp-rpc, matched by peers
	ErrUnknownService = errors.New(unknownServiceText)

	// ErrNoRestorer is returned when a vat without a Restorer is asked to
	// restore a service. Use IsNoRestorer to recognise it after it crossed
	// the wire.
	//lint:ignore ST1005 exact text of OCaml capnp-rpc, matched by peers
	ErrNoRestorer = errors.New(noRestorerText)

	// ErrKeyMismatch is returned when a peer's TLS key does not hash to the
	// digest in the sturdy ref: the dialler reached a vat other than the one
	// the URI names.
	ErrKeyMismatch = errors.New("vat key mismatch")

	// ErrSelfConnection is returned when a connection turns out to reach
	// this very process (its own digest and instance), as when a replica
	// dials an address of its own workload that is its own.
	ErrSelfConnection = errors.New("connection to this vat's own process")

	// ErrRevoked is the exception of calls on a capability whose table entry
	// was removed.
	ErrRevoked = errors.New("capability revoked")

	// ErrOverloaded is the exception (of type Overloaded) of calls refused
	// because the connection already runs its maximum number of concurrent
	// calls.
	ErrOverloaded = errors.New("too many concurrent calls on this connection")

	// ErrAnswerBudget ends a connection whose peer made more calls it had
	// not finished than Config.MaxAnswers.
	ErrAnswerBudget = errors.New("answer budget exceeded")

	// ErrClosed is returned by operations on a closed vat.
	ErrClosed = errors.New("vat closed")

	// ErrNoPublicAddress is returned by SturdyRef when the vat accepts no
	// connections, so no URI can reach it.
	ErrNoPublicAddress = errors.New("vat has no public address")

	// ErrInvalidURI wraps every URI parse error; the wrapping message names
	// the problem ("Unknown scheme", "Missing port", ...).
	ErrInvalidURI = errors.New("invalid capnp URI")

	// ErrInvalidAddress wraps every address parse error.
	ErrInvalidAddress = errors.New("invalid vat address")

	// ErrInvalidKey is returned when a key file holds no usable private key.
	ErrInvalidKey = errors.New("invalid vat key")

	// ErrDisconnected wraps failures to reach a peer vat and the breaking of
	// a connection; capabilities of a lost connection fail with a capnp
	// exception of type Disconnected (see IsDisconnected).
	ErrDisconnected = errors.New("peer vat disconnected")

	// ErrInsecureMismatch is returned when an insecure vat imports a secure
	// URI or the other way round.
	ErrInsecureMismatch = errors.New("TLS mode of URI does not match the vat")
)

// IsUnknownService reports whether err is ErrUnknownService, either locally
// or as a capnp exception received from a peer.
func IsUnknownService(err error) bool {
	return err != nil && (errors.Is(err, ErrUnknownService) || strings.Contains(err.Error(), unknownServiceText))
}

// IsNoRestorer reports whether err is ErrNoRestorer, either locally or as a
// capnp exception received from a peer.
func IsNoRestorer(err error) bool {
	return err != nil && (errors.Is(err, ErrNoRestorer) || strings.Contains(err.Error(), noRestorerText))
}

// IsDisconnected reports whether err means the peer vat could not be reached
// or its connection broke: ErrDisconnected, ErrKeyMismatch, ErrClosed, a
// capnp exception of type Disconnected anywhere in the chain, or a network
// error (go-capnp reports a write to a dead connection as a Failed
// exception wrapping the socket's error).
func IsDisconnected(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrDisconnected) || errors.Is(err, ErrKeyMismatch) || errors.Is(err, ErrClosed) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNREFUSED) {
		return true
	}
	var ne *net.OpError
	if errors.As(err, &ne) {
		return true
	}
	for e := err; e != nil; e = errors.Unwrap(e) {
		var ex *exc.Exception
		if errors.As(e, &ex) {
			if ex.Type == exc.Disconnected {
				return true
			}
			e = ex // continue below it
		}
	}
	return false
}

// IsOverloaded reports whether err is an exception of type Overloaded.
func IsOverloaded(err error) bool {
	return err != nil && (errors.Is(err, ErrOverloaded) || exc.IsType(err, exc.Overloaded))
}

// redactedError is an error whose text had a service id taken out; the
// original stays reachable for errors.Is and errors.As.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// redactID returns err with every spelling of id in its text (raw, as C++
// and OCaml peers quote a Text id, and base64) replaced by "<service id>".
func redactID(err error, id ServiceID) error {
	if err == nil || len(id) < 4 {
		return err
	}
	msg := err.Error()
	out := msg
	for _, s := range []string{string(id), id.Base64(), base64.StdEncoding.EncodeToString(id), base64.RawStdEncoding.EncodeToString(id)} {
		out = strings.ReplaceAll(out, s, "<service id>")
	}
	if out == msg {
		return err
	}
	return &redactedError{msg: out, err: err}
}
