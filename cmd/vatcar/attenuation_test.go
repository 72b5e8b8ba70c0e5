package main_test

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/vatcar/vatcar/vat"
)

// mdBackend serves the interop TestService and remembers the metadata of
// the last call.
type mdBackend struct {
	mu   sync.Mutex
	last metadata.MD
}

func (b *mdBackend) lastMD() metadata.MD {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.last
}

func startMDBackend(t *testing.T) (string, *mdBackend) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &mdBackend{}
	record := func(ctx context.Context) {
		md, _ := metadata.FromIncomingContext(ctx)
		b.mu.Lock()
		b.last = md
		b.mu.Unlock()
	}
	srv := grpc.NewServer(
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			record(ctx)
			return h(ctx, req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			record(ss.Context())
			return h(srv, ss)
		}))
	testgrpc.RegisterTestServiceServer(srv, interop.NewTestServer())
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return ln.Addr().String(), b
}

// narrow runs `vatcar ref narrow ref args...` and returns the new URI.
func narrow(t *testing.T, ref string, args ...string) string {
	t.Helper()
	out := strings.TrimSpace(run(t, append([]string{"ref", "narrow", ref}, args...)...))
	if !strings.HasPrefix(out, "capnp://") || strings.Contains(out, "\n") {
		t.Fatalf("ref narrow printed %q, want one URI", out)
	}
	return out
}

// importClient starts an importing sidecar for uri (with key file key, or
// an ephemeral key) and returns a client of the import.
func importClient(t *testing.T, uri, key string) testgrpc.TestServiceClient {
	t.Helper()
	args := []string{"--import", "n=" + uri}
	if key != "" {
		args = append(args, "--secret-key-file", key)
	}
	_, a := startSidecar(t, args...)
	return testgrpc.NewTestServiceClient(dial(t, a.Imports["n"]))
}

func wantCode(t *testing.T, what string, err error, code codes.Code, text string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), text) {
		t.Errorf("%s: got %v, want %v with %q", what, err, code, text)
	}
}

const (
	unaryM = "/grpc.testing.TestService/UnaryCall"
	emptyM = "/grpc.testing.TestService/EmptyCall"
	outM   = "/grpc.testing.TestService/StreamingOutputCall"
)

func TestNarrowedRefs(t *testing.T) {
	backend, seen := startMDBackend(t)
	dir := t.TempDir()
	revocations := filepath.Join(dir, "revocations")
	exporter, _ := startSidecar(t, "--listen", "tcp:127.0.0.1:0", "--secret-key-file", filepath.Join(dir, "exporter.pem"),
		"--export", "test="+backend, "--cap-dir", dir, "--revocations", revocations, "--clock-skew", "-1s")
	root := strings.TrimSpace(readFile(t, filepath.Join(dir, "test.cap")))
	ctx := ctxTimeout(t, time.Minute)
	empty := &testgrpc.Empty{}

	t.Run("methods", func(t *testing.T) {
		n1 := narrow(t, root, "--methods", unaryM+","+emptyM)
		n2 := narrow(t, n1, "--methods", emptyM+","+outM) // can only take away
		c1, c2 := importClient(t, n1, ""), importClient(t, n2, "")
		if _, err := c1.UnaryCall(ctx, &testgrpc.SimpleRequest{}); err != nil {
			t.Errorf("n1 UnaryCall: %v", err)
		}
		if _, err := c1.EmptyCall(ctx, empty); err != nil {
			t.Errorf("n1 EmptyCall: %v", err)
		}
		s, err := c1.StreamingOutputCall(ctx, &testgrpc.StreamingOutputCallRequest{})
		if err == nil {
			_, err = s.Recv()
		}
		wantCode(t, "n1 StreamingOutputCall", err, codes.PermissionDenied, "methods caveat")
		if _, err := c2.EmptyCall(ctx, empty); err != nil {
			t.Errorf("n2 EmptyCall: %v", err)
		}
		_, err = c2.UnaryCall(ctx, &testgrpc.SimpleRequest{})
		wantCode(t, "n2 UnaryCall (its parent allows it, it does not)", err, codes.PermissionDenied, "methods caveat")
		s, err = c2.StreamingOutputCall(ctx, &testgrpc.StreamingOutputCallRequest{})
		if err == nil {
			_, err = s.Recv()
		}
		wantCode(t, "n2 StreamingOutputCall (its parent does not allow it)", err, codes.PermissionDenied, "methods caveat")
	})

	t.Run("peer", func(t *testing.T) {
		key := filepath.Join(t.TempDir(), "importer.pem")
		digest := strings.TrimSpace(run(t, "keygen", "--secret-key-file", key))
		bound := narrow(t, root, "--peer", digest)
		if _, err := importClient(t, bound, key).EmptyCall(ctx, empty); err != nil {
			t.Errorf("ref bound to the importer: %v", err)
		}
		_, err := importClient(t, bound, "").EmptyCall(ctx, empty)
		wantCode(t, "ref bound to another vat", err, codes.PermissionDenied, "peer caveat")
		if md := seen.lastMD(); len(md["vatcar-peer"]) != 1 || md["vatcar-peer"][0] != digest {
			t.Errorf("backend saw vatcar-peer %v, want the bound importer %s", md["vatcar-peer"], digest)
		}
	})

	t.Run("backend learns who calls", func(t *testing.T) {
		key := filepath.Join(t.TempDir(), "importer.pem")
		digest := strings.TrimSpace(run(t, "keygen", "--secret-key-file", key))
		n := narrow(t, root, "--methods", emptyM)
		spoof := metadata.AppendToOutgoingContext(ctx, "vatcar-peer", "sha-256:spoofed", "vatcar-ref", "rev1:spoofed", "vatcar-other", "x")
		if _, err := importClient(t, n, key).EmptyCall(spoof, empty); err != nil {
			t.Fatal(err)
		}
		md := seen.lastMD()
		wantRef, err := vat.URIRevocationID(n)
		if err != nil {
			t.Fatal(err)
		}
		if got := md["vatcar-peer"]; len(got) != 1 || got[0] != digest {
			t.Errorf("vatcar-peer = %v, want [%s]", got, digest)
		}
		if got := md["vatcar-ref"]; len(got) != 1 || got[0] != wantRef.String() {
			t.Errorf("vatcar-ref = %v, want [%s]", got, wantRef)
		}
		if got := md["vatcar-other"]; len(got) != 0 {
			t.Errorf("an app-set vatcar-other reached the backend: %v", got)
		}
	})

	t.Run("tampered token", func(t *testing.T) {
		n := narrow(t, root, "--methods", emptyM)
		loc, seg, err := vat.ParseURI(n)
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range []int{0, 1, 40, len(seg) / 2, len(seg) - 1} {
			bad := append([]byte(nil), seg...)
			bad[i] ^= 0x10
			_, err := importClient(t, vat.FormatURI(loc, bad), "").EmptyCall(ctx, empty)
			wantCode(t, "a token with a flipped bit", err, codes.NotFound, "Unknown persistent service ID")
		}
	})

	t.Run("expiry", func(t *testing.T) {
		n := narrow(t, root, "--expires", "8s") // room for a slow importer start
		c := importClient(t, n, "")
		if _, err := c.EmptyCall(ctx, empty); err != nil {
			t.Fatalf("before expiry: %v", err)
		}
		// A server stream of 150 messages 100ms apart, open across the expiry.
		params := make([]*testgrpc.ResponseParameters, 150)
		for i := range params {
			params[i] = &testgrpc.ResponseParameters{Size: 1, IntervalUs: 100_000}
		}
		s, err := c.StreamingOutputCall(ctx, &testgrpc.StreamingOutputCallRequest{ResponseParameters: params})
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for {
			if _, err = s.Recv(); err != nil {
				break
			}
			got++
		}
		if err == io.EOF || got >= 150 {
			t.Fatalf("the stream outlived the ref: %d messages, %v", got, err)
		}
		wantCode(t, "stream open across expiry", err, codes.PermissionDenied, "expir")
		_, err = c.EmptyCall(ctx, empty)
		wantCode(t, "after expiry", err, codes.PermissionDenied, "expir")
	})

	t.Run("revocation list", func(t *testing.T) {
		parent := narrow(t, root, "--methods", emptyM+","+unaryM)
		child := narrow(t, parent, "--methods", emptyM)
		cr, cp, cc := importClient(t, root, ""), importClient(t, parent, ""), importClient(t, child, "")
		for name, c := range map[string]testgrpc.TestServiceClient{"root": cr, "parent": cp, "child": cc} {
			if _, err := c.EmptyCall(ctx, empty); err != nil {
				t.Fatalf("%s before revocation: %v", name, err)
			}
		}
		if err := os.WriteFile(revocations, []byte("# leaked\n"+parent+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		waitFor(t, 10*time.Second, "parent and child refused", func() bool {
			_, ep := cp.EmptyCall(ctx, empty)
			_, ec := cc.EmptyCall(ctx, empty)
			return status.Code(ep) == codes.NotFound && status.Code(ec) == codes.NotFound
		})
		t.Logf("narrowed ref and its child refused %v after the list was written", time.Since(start).Round(time.Millisecond))
		if _, err := cr.EmptyCall(ctx, empty); err != nil {
			t.Errorf("root after revoking a narrowed ref: %v", err)
		}
	})
	_ = exporter
}

// TestNarrowedRefOnEveryReplica narrows the replicas' shared URI offline:
// every replica sharing the key accepts it.
func TestNarrowedRefOnEveryReplica(t *testing.T) {
	rs := startReplicas(t)
	n := narrow(t, "@"+rs.capFile, "--methods", unaryM)
	_, imp := startSidecar(t, "--hosts-file", rs.hostFile, "--import", "test="+n)
	client := testgrpc.NewTestServiceClient(dial(t, imp.Imports["test"]))
	ctx := ctxTimeout(t, time.Minute)
	waitFor(t, 30*time.Second, "every replica served the narrowed ref", func() bool {
		if _, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{}); err != nil {
			t.Fatalf("UnaryCall: %v", err)
		}
		return rs.served[0].Load() > 0 && rs.served[1].Load() > 0 && rs.served[2].Load() > 0
	})
	_, err := client.EmptyCall(ctx, &testgrpc.Empty{})
	wantCode(t, "EmptyCall on a ref narrowed to UnaryCall", err, codes.PermissionDenied, "methods caveat")
}

// TestRefCommands checks `vatcar ref inspect` output and `ref narrow`'s
// refusals of bad input (exit status 2, a message naming the problem).
func TestRefCommands(t *testing.T) {
	const root = "capnp://sha-256:s16WV4JeGusAL_nTjvICiQOFqm3LqYrDj3K-HXdMi8s@localhost:7000/bWFpbmJ1dHJhdGhlcmxvbmdlcnRoYW50aGlzaXM"
	n := narrow(t, root, "--methods", emptyM, "--expires", "2099-01-02T03:04:05Z", "--peer", "sha-256:s16WV4JeGusAL_nTjvICiQOFqm3LqYrDj3K-HXdMi8s")
	_, rootID, _ := vat.ParseURI(root)
	_, seg, _ := vat.ParseURI(n)
	out := run(t, "ref", "inspect", n)
	rev, _ := vat.URIRevocationID(n)
	for _, want := range []string{"vat:     sha-256:s16WV4", "address: tcp:localhost:7000", "narrowed, 1 block(s)",
		"methods: " + emptyM, "expires: 2099-01-02T03:04:05Z", "peer: sha-256:s16WV4", "expired: false", "revocation id: " + rev.String()} {
		if !strings.Contains(out, want) {
			t.Errorf("ref inspect lacks %q:\n%s", want, out)
		}
	}
	for _, secret := range []string{vat.ServiceID(rootID).Base64(), vat.ServiceID(seg).Base64(), vat.ServiceID(seg[len(seg)-32:]).Base64()} {
		if strings.Contains(out, secret) {
			t.Errorf("ref inspect shows a secret:\n%s", out)
		}
	}
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"bad method pattern", []string{root, "--methods", "/pkg.S/Hel*"}, "bad method pattern"},
		{"expiry in the past", []string{root, "--expires", "2001-01-01T00:00:00Z"}, "in the past"},
		{"negative duration", []string{root, "--expires", "-1h"}, "not in the future"},
		{"bad expiry", []string{root, "--expires", "tomorrow"}, "neither a duration"},
		{"bad peer", []string{root, "--peer", "sha-256:short"}, "digest"},
		{"not a sturdy ref", []string{"http://example.com/x"}, "not a sturdy ref"},
		{"no service", []string{"capnp://sha-256:s16WV4JeGusAL_nTjvICiQOFqm3LqYrDj3K-HXdMi8s@localhost:7000"}, "names no service"},
		{"unknown flag", []string{root, "--widen"}, "widen"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := start(t, append([]string{"ref", "narrow"}, tt.args...)...)
			if code := p.wait(30 * time.Second); code != 2 {
				t.Errorf("exit status %d, want 2", code)
			}
			if out := p.stderr.String(); !strings.Contains(out, tt.want) || strings.Contains(out, "bWFpbmJ1dHJh") {
				t.Errorf("output %q: want %q and no service id", out, tt.want)
			}
		})
	}
}

// TestCtlNarrowAndRevokeRef mints a narrowed ref through the admin API and
// revokes it by its URI with ctl: the narrowed ref stops, the root goes on.
func TestCtlNarrowAndRevokeRef(t *testing.T) {
	p := startPair(t)
	admin := "--admin=" + p.exp.Admin
	n := strings.TrimSpace(run(t, "ctl", admin, "narrow", "test", "--methods", emptyM, "--expires", "1h"))
	if !strings.HasPrefix(n, "capnp://") {
		t.Fatalf("ctl narrow printed %q", n)
	}
	out := run(t, "ref", "inspect", n)
	if !strings.Contains(out, "methods: "+emptyM) || !strings.Contains(out, "expires: ") {
		t.Errorf("minted ref lacks its caveats:\n%s", out)
	}
	ctx := ctxTimeout(t, time.Minute)
	c := importClient(t, n, "")
	if _, err := c.EmptyCall(ctx, &testgrpc.Empty{}); err != nil {
		t.Fatalf("minted ref: %v", err)
	}
	_, err := c.UnaryCall(ctx, &testgrpc.SimpleRequest{})
	wantCode(t, "minted ref, another method", err, codes.PermissionDenied, "methods caveat")

	bad := start(t, "ctl", admin, "narrow", "test", "--methods", "nope")
	if code := bad.wait(30 * time.Second); code == 0 {
		t.Error("ctl narrow with a malformed method exited 0")
	}
	rev, _ := vat.URIRevocationID(n)
	if out := run(t, "ctl", admin, "revoke", n); !strings.Contains(out, rev.String()) {
		t.Errorf("ctl revoke URI printed %q, want the revocation id %s", out, rev)
	}
	_, err = c.EmptyCall(ctx, &testgrpc.Empty{})
	wantCode(t, "revoked narrowed ref", err, codes.NotFound, "")
	if _, err := p.client.EmptyCall(ctx, &testgrpc.Empty{}); err != nil {
		t.Errorf("root after revoking a narrowed ref: %v", err)
	}
}
