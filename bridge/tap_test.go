package bridge

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
)

// TestRequestMetadataWithAndWithoutTap sends request metadata through the
// ingress's server with its tap handle (the handler reads the transport's
// map), with the tap chained before a tap of the caller's own (which must
// still run), and through a server without it (the handler copies the
// metadata from the incoming context): the backend sees the same metadata
// every way, multiple values and binary values included.
func TestRequestMetadataWithAndWithoutTap(t *testing.T) {
	b := newBackend(t)
	h := newHop(t, b.addr, hopConfig{})
	start := func(opts ...grpc.ServerOption) string {
		srv := h.in.NewServer(opts...)
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(l)
		t.Cleanup(srv.Stop)
		return l.Addr().String()
	}
	var ownTapRuns atomic.Int64
	own := func(ctx context.Context, info *tap.Info) (context.Context, error) {
		if len(info.Header["x-code"]) == 1 {
			ownTapRuns.Add(1)
		}
		return ctx, nil
	}
	servers := map[string]string{
		"tapped":      h.addr,
		"own tap too": start(grpc.InTapHandle(h.in.TapHandle(own))),
		"without tap": start(),
	}

	for name, addr := range servers {
		t.Run(name, func(t *testing.T) {
			cc := dial(t, addr)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			msg := "md \x00 \u00e9"
			ctx = metadata.AppendToOutgoingContext(ctx, "x-code", "9", "x-message-bin", msg, "x-send-headers", "1", "x-send-headers", "2")
			var hdr metadata.MD
			s := rawStream(ctx, t, cc, "/t.T/Fail", grpc.Header(&hdr))
			if err := s.CloseSend(); err != nil {
				t.Fatal(err)
			}
			_, err := recvAll(s)
			if st := status.Convert(err); st.Code() != codes.FailedPrecondition || st.Message() != msg {
				t.Fatalf("status %v %q, want FailedPrecondition %q (from the request's metadata)", st.Code(), st.Message(), msg)
			}
			if got := hdr["x-hdr"]; len(got) != 1 || got[0] != "h" {
				t.Fatalf("response headers %v: the backend did not see x-send-headers", hdr)
			}
		})
	}
	if got := ownTapRuns.Load(); got != 1 {
		t.Errorf("the caller's own tap ran %d times with the call's metadata, want once", got)
	}
}
