package bridge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"capnproto.org/go/capnp/v3/exc"
	"capnproto.org/go/capnp/v3/rpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestStatus(t *testing.T) {
	appErr := status.Error(codes.PermissionDenied, "nope ✓")
	cases := []struct {
		name     string
		err      error
		code     codes.Code
		contains string
	}{
		{"nil", nil, codes.OK, ""},
		{"grpc status", appErr, codes.PermissionDenied, "nope ✓"},
		{"wrapped grpc status", fmt.Errorf("director: %w", appErr), codes.PermissionDenied, "nope ✓"},
		{"canceled", context.Canceled, codes.Canceled, "canceled"},
		{"deadline", fmt.Errorf("call: %w", context.DeadlineExceeded), codes.DeadlineExceeded, "deadline"},
		{"disconnected", exc.New(exc.Disconnected, "rpc", "connection closed"), codes.Unavailable, "connection closed"},
		{"conn closed", rpc.ExcClosed, codes.Unavailable, "closed"},
		{"overloaded", exc.New(exc.Overloaded, "bridge", "too many"), codes.ResourceExhausted, "too many"},
		{"unimplemented", exc.New(exc.Unimplemented, "", "unimplemented"), codes.Unimplemented, "unimplemented"},
		{"unknown sturdy ref", exc.New(exc.Failed, "vat", "Unknown persistent service ID"), codes.NotFound, "Unknown persistent service ID"},
		{"no restorer", errors.New("This vat has no restorer"), codes.NotFound, "This vat has no restorer"},
		{"too large", fmt.Errorf("x: %w", ErrMessageTooLarge), codes.ResourceExhausted, "larger"},
		{"stream lost", ErrStreamLost, codes.Unavailable, "lost"},
		{"eof", io.ErrUnexpectedEOF, codes.Unavailable, "EOF"},
		{"failed", exc.New(exc.Failed, "", "boom"), codes.Unknown, "boom"},
		{"plain", errors.New("boom"), codes.Unknown, "boom"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := Status(c.err)
			if st.Code() != c.code {
				t.Errorf("Status(%v).Code() = %v, want %v", c.err, st.Code(), c.code)
			}
			if c.contains != "" && !contains(st.Message(), c.contains) {
				t.Errorf("Status(%v).Message() = %q, want it to contain %q", c.err, st.Message(), c.contains)
			}
		})
	}
	if got := Status(appErr); got.Message() != "nope ✓" {
		t.Errorf("a gRPC status changed: %q", got.Message())
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}
