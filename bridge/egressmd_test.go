package bridge

import (
	"context"
	"io"
	"reflect"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/vatcar/vatcar/proto/captp"
)

// seenCall is what a backend saw of a call.
type seenCall struct {
	md       metadata.MD
	deadline bool
}

// mdBackend starts a gRPC server that answers every call with its request
// and reports the metadata and deadline each call arrived with.
func mdBackend(t *testing.T) (addr string, seen <-chan seenCall) {
	ch := make(chan seenCall, 10)
	addr = serve(t, func(*grpc.Server) {}, grpc.ForceServerCodecV2(Codec()),
		grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
			md, _ := metadata.FromIncomingContext(ss.Context())
			_, deadline := ss.Context().Deadline()
			ch <- seenCall{md, deadline}
			var m []byte
			if err := ss.RecvMsg(&m); err != nil && err != io.EOF {
				return err
			}
			return ss.SendMsg(m)
		}))
	return addr, ch
}

// appMetadata drops from md the keys the gRPC libraries set, leaving what
// the app and vatcar sent.
func appMetadata(md metadata.MD) metadata.MD {
	out := metadata.MD{}
	for k, v := range md {
		if !ReservedHeader(k) && k != ":authority" {
			out[k] = v
		}
	}
	return out
}

// unaryWithMD calls svc's unary method /t.T/Any with the metadata entries
// as a peer wrote them (any case, repeated, in order).
func unaryWithMD(ctx context.Context, t *testing.T, svc captp.GrpcService, entries [][2]string) {
	t.Helper()
	f, release := svc.Unary(ctx, func(p captp.GrpcService_unary_Params) error {
		h, err := p.NewCall()
		if err != nil {
			return err
		}
		if err := h.SetMethod("/t.T/Any"); err != nil {
			return err
		}
		h.SetTimeoutNanos(int64(time.Minute))
		if len(entries) > 0 {
			if err := setMetadata(h, entries); err != nil {
				return err
			}
		}
		return p.SetRequest([]byte("ping"))
	})
	defer release()
	res, err := f.Struct()
	if err != nil {
		t.Fatalf("unary: %v", err)
	}
	r, err := res.Reply()
	if err != nil {
		t.Fatalf("unary reply: %v", err)
	}
	st, err := r.Status()
	if err != nil {
		t.Fatal(err)
	}
	if msg, _ := st.Message_(); st.Code() != 0 {
		t.Fatalf("unary status %d %q, want OK", st.Code(), msg)
	}
}

// TestEgressRequestMetadata checks what metadata the backend gets for a
// call arriving over CapTP: the request's own keys lowercased, repeated
// keys in their order, binary values as sent; the caller's vatcar-peer and
// vatcar-ref, never a peer's forgery in any case; no vatcar-* key without
// a caller; none of the egress's base context's outgoing metadata.
func TestEgressRequestMetadata(t *testing.T) {
	backend, seen := mdBackend(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	forged := [][2]string{
		{"VATCAR-PEER", "sha-256:forged"}, {"Vatcar-Ref", "rev1:forged"}, {"vatcar-peer", "sha-256:forged"},
		{"vatcar-ref", "rev1:forged"}, {"vatcar-other", "x"},
	}
	mixed := append([][2]string{
		{"X-A", "1"}, {"x-b-bin", "\x00\xff"}, {"x-a", "2"}, {"content-type", "application/grpc+proto"},
		{"user-agent", "forged-ua"}, {"X-A", "3"},
	}, forged...)
	for _, tc := range []struct {
		name    string
		caller  *Caller
		base    context.Context
		entries [][2]string
		want    metadata.MD
	}{
		{
			name:    "caller and request metadata",
			caller:  &Caller{Peer: "sha-256:me", Ref: "rev1:r"},
			entries: mixed,
			want: metadata.MD{"x-a": {"1", "2", "3"}, "x-b-bin": {"\x00\xff"},
				MetadataPeer: {"sha-256:me"}, MetadataRef: {"rev1:r"}},
		},
		{
			name:    "caller alone",
			caller:  &Caller{Peer: "sha-256:me", Ref: "rev1:r"},
			entries: forged,
			want:    metadata.MD{MetadataPeer: {"sha-256:me"}, MetadataRef: {"rev1:r"}},
		},
		{
			name:    "caller without a ref",
			caller:  &Caller{Peer: "sha-256:me"},
			entries: forged,
			want:    metadata.MD{MetadataPeer: {"sha-256:me"}},
		},
		{
			name:    "empty caller",
			caller:  &Caller{},
			entries: forged,
			want:    metadata.MD{},
		},
		{
			name:    "no caller",
			entries: mixed,
			want:    metadata.MD{"x-a": {"1", "2", "3"}, "x-b-bin": {"\x00\xff"}},
		},
		{
			name: "no caller, no metadata",
			want: metadata.MD{},
		},
		{
			name:    "base context with outgoing metadata",
			caller:  &Caller{Peer: "sha-256:me"},
			base:    metadata.AppendToOutgoingContext(context.Background(), "x-base", "1", MetadataRef, "rev1:base"),
			entries: [][2]string{{"x-a", "1"}},
			want:    metadata.MD{"x-a": {"1"}, MetadataPeer: {"sha-256:me"}},
		},
		{
			name:   "base context with outgoing metadata, caller alone",
			caller: &Caller{Peer: "sha-256:me"},
			base:   metadata.NewOutgoingContext(context.Background(), metadata.Pairs("x-base", "1")),
			want:   metadata.MD{MetadataPeer: {"sha-256:me"}},
		},
		{
			name: "base context with outgoing metadata, none",
			base: metadata.NewOutgoingContext(context.Background(), metadata.Pairs("x-base", "1")),
			want: metadata.MD{},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := EgressConfig{Context: tc.base}
			if tc.caller != nil {
				c := *tc.caller
				cfg.Caller = func(context.Context) (Caller, bool) { return c, true }
			}
			h := newHop(t, backend, hopConfig{egress: cfg})
			for range 2 { // the second call reuses the caller's metadata
				unaryWithMD(ctx, t, h.svc, tc.entries)
				var got seenCall
				select {
				case got = <-seen:
				case <-ctx.Done():
					t.Fatal("the backend saw no call")
				}
				if md := appMetadata(got.md); !reflect.DeepEqual(md, tc.want) {
					t.Errorf("backend got %q, want %q", md, tc.want)
				}
				if !got.deadline {
					t.Error("backend got no deadline")
				}
			}
		})
	}
}
