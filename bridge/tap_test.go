package bridge

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// TestRequestMetadataWithAndWithoutTap sends request metadata through the
// ingress built with ServerOptions (its tap hands the handler the
// transport's map) and through a server built with Handler alone (the
// handler copies it from the incoming context): the backend sees the same
// metadata either way, multiple values and binary values included.
func TestRequestMetadataWithAndWithoutTap(t *testing.T) {
	b := newBackend(t)
	h := newHop(t, b.addr, hopConfig{})
	plain := grpc.NewServer(grpc.UnknownServiceHandler(h.in.Handler()), grpc.ForceServerCodecV2(Codec()))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go plain.Serve(l)
	t.Cleanup(plain.Stop)

	for name, addr := range map[string]string{"tapped": h.addr, "handler only": l.Addr().String()} {
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
}
