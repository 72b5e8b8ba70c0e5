package main_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

// handshakeTimeout is the sidecar's bound on a TLS handshake (vat) and on an
// HTTP/2 handshake (app-facing endpoints); closeWithin adds slack for a
// loaded machine.
const (
	handshakeTimeout = 10 * time.Second
	closeWithin      = handshakeTimeout + 10*time.Second
)

// TestRevokedRefFailsNotFound revokes an export while one importer has a
// stream open on it, another holds a live capability and a third has not
// connected yet: the open stream is cut off and every new call through any
// of them fails, all with NOT_FOUND (the live capability's first call
// naming the revocation).
func TestRevokedRefFailsNotFound(t *testing.T) {
	p := startPair(t)
	ctx := ctxTimeout(t, 30*time.Second)
	stream, err := p.client.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pingPong(t, stream, 1)
	uri := strings.TrimSpace(readFile(t, p.capFile)) // revoke removes the cap file
	_, live := startSidecar(t, "--import", "test="+uri)
	liveClient := testpb.NewTestServiceClient(dial(t, live.Imports["test"]))
	if _, err := liveClient.EmptyCall(ctx, &testpb.Empty{}); err != nil {
		t.Fatal(err)
	}
	run(t, "ctl", "--admin", p.exp.Admin, "revoke", "test")
	_, fresh := startSidecar(t, "--import", "test="+uri)
	freshClient := testpb.NewTestServiceClient(dial(t, fresh.Imports["test"]))

	_, err = stream.Recv()
	if st := status.Convert(err); st.Code() != codes.NotFound || !strings.Contains(st.Message(), "revoked") {
		t.Errorf("stream open across the revocation: Recv = %v, want NotFound naming the revocation", err)
	}
	const unknown = "Unknown persistent service ID"
	tests := []struct {
		name     string
		client   testpb.TestServiceClient
		contains string
	}{
		{"importer whose stream was cut", p.client, unknown},
		{"live capability", liveClient, "capability revoked"},
		{"live capability, next call", liveClient, unknown},
		{"fresh restore", freshClient, unknown},
	}
	for _, tt := range tests {
		_, err := tt.client.EmptyCall(ctx, &testpb.Empty{})
		if st := status.Convert(err); st.Code() != codes.NotFound || !strings.Contains(st.Message(), tt.contains) {
			t.Errorf("%s: %v, want NotFound containing %q", tt.name, err, tt.contains)
		}
	}
}

// TestOversizeMessageFailsOnlyThatCall sends a message over one sidecar's
// --max-message-size, each way and on each side, unary and streaming: the
// call fails with RESOURCE_EXHAUSTED, a stream open on the same connection
// and later calls go on working, and neither sidecar holds anything for the
// refused calls afterwards.
func TestOversizeMessageFailsOnlyThatCall(t *testing.T) {
	const big = 8 << 20 // over the default 4 MiB, under 16 MiB
	big16 := []string{"--max-message-size", "16MiB"}
	wide := []grpc.CallOption{grpc.MaxCallSendMsgSize(32 << 20), grpc.MaxCallRecvMsgSize(32 << 20)}
	up := &testpb.Payload{Body: make([]byte, big)}
	down := []*testpb.ResponseParameters{{Size: big}}
	ctx := ctxTimeout(t, 60*time.Second)
	for _, side := range []struct {
		name          string
		importer, exp []string
	}{
		{"importer limit", nil, big16},
		{"exporter limit", big16, nil},
	} {
		p := startPairArgs(t, side.importer, side.exp...)
		open, err := p.client.FullDuplexCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pingPong(t, open, 1)
		importerSettles, exporterSettles := baseline(t, p.imp.Admin), baseline(t, p.exp.Admin)
		calls := []struct {
			name string
			call func() error
		}{
			{"unary request", func() error {
				_, err := p.client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: up}, wide...)
				return err
			}},
			{"unary response", func() error {
				_, err := p.client.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: big}, wide...)
				return err
			}},
			{"stream message up", func() error {
				return sendRecv(p.client, ctx, &testpb.StreamingOutputCallRequest{Payload: up}, wide)
			}},
			{"stream message down", func() error {
				return sendRecv(p.client, ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: down}, wide)
			}},
		}
		for _, c := range calls {
			if err := c.call(); status.Code(err) != codes.ResourceExhausted {
				t.Errorf("%s, %s over it: %v, want RESOURCE_EXHAUSTED", side.name, c.name, err)
			}
			pingPong(t, open, 1000)
			if _, err := p.client.EmptyCall(ctx, &testpb.Empty{}); err != nil {
				t.Errorf("%s, call after the %s: %v", side.name, c.name, err)
			}
		}
		if err := open.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := open.Recv(); err != io.EOF {
			t.Errorf("%s: stream across the refused messages ended with %v, want EOF", side.name, err)
		}
		importerSettles() // the refused calls hold nothing
		exporterSettles()
	}
}

// sendRecv sends req on a new bidi stream and returns the error of the first
// Recv.
func sendRecv(c testpb.TestServiceClient, ctx context.Context, req *testpb.StreamingOutputCallRequest, opts []grpc.CallOption) error {
	s, err := c.FullDuplexCall(ctx, opts...)
	if err != nil {
		return err
	}
	if err := s.Send(req); err != nil && err != io.EOF {
		return err
	}
	_, err = s.Recv()
	return err
}

// selfSigned is a throwaway client certificate, as a stranger would present.
func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "capnp"}, NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
}

// junkClient does something wrong on a fresh connection and returns what to
// read the server's answer from.
type junkClient struct {
	name string
	do   func(t *testing.T, c net.Conn) net.Conn
}

func write(s string) func(*testing.T, net.Conn) net.Conn {
	return func(t *testing.T, c net.Conn) net.Conn {
		if _, err := c.Write([]byte(s)); err != nil {
			t.Errorf("write: %v", err)
		}
		return c
	}
}

// expectDropped runs each client against addr at once and checks the server
// closes every connection by itself within closeWithin.
func expectDropped(t *testing.T, addr string, clients []junkClient) {
	t.Helper()
	var wg sync.WaitGroup
	for _, jc := range clients {
		wg.Go(func() {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Errorf("%s: %v", jc.name, err)
				return
			}
			defer c.Close()
			start := time.Now()
			rc := jc.do(t, c)
			rc.SetReadDeadline(start.Add(closeWithin))
			_, err = io.Copy(io.Discard, rc)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Errorf("%s: connection still open after %v", jc.name, time.Since(start))
			}
		})
	}
	wg.Wait()
}

// baseline notes the sidecar's open file descriptors and goroutines now and
// returns a check that polls until they are back to at most that (plus a
// little noise).
func baseline(t *testing.T, admin string) (settles func()) {
	fds, goroutines := scrape(t, admin, "process_open_fds", nil), scrape(t, admin, "go_goroutines", nil)
	return func() {
		t.Helper()
		waitFor(t, 20*time.Second, "open fds and goroutines back to the baseline", func() bool {
			return scrape(t, admin, "process_open_fds", nil) <= fds &&
				scrape(t, admin, "go_goroutines", nil) <= goroutines+2
		})
	}
}

// startCalledPair is startPair after one successful call: the connection
// between the sidecars is up.
func startCalledPair(t *testing.T) (*pair, context.Context) {
	t.Helper()
	p := startPair(t)
	ctx := ctxTimeout(t, 60*time.Second)
	if _, err := p.client.EmptyCall(ctx, &testpb.Empty{}); err != nil {
		t.Fatal(err)
	}
	return p, ctx
}

// TestCapTPPortDropsJunk sends what a stranger on the network might to a
// vat's CapTP port: plain TCP junk, TLS 1.2, TLS 1.3 without a client
// certificate, a valid TLS session carrying junk instead of Cap'n Proto,
// a connection that never says anything, and one that stops mid-handshake.
// The vat drops each (the last two at the handshake timeout), logs it,
// holds no descriptor, goroutine or metric series afterwards, and keeps
// serving calls.
func TestCapTPPortDropsJunk(t *testing.T) {
	t.Parallel()
	p, ctx := startCalledPair(t)
	settles := baseline(t, p.exp.Admin)
	tlsClient := func(cfg *tls.Config, then string) func(*testing.T, net.Conn) net.Conn {
		return func(t *testing.T, c net.Conn) net.Conn {
			cfg.InsecureSkipVerify = true // a stranger does not check either
			tc := tls.Client(c, cfg)
			if err := tc.Handshake(); err == nil && then != "" {
				tc.Write([]byte(then))
			}
			return tc
		}
	}
	expectDropped(t, strings.TrimPrefix(p.exp.Listen, "tcp:"), []junkClient{
		{"HTTP request", write("GET / HTTP/1.1\r\nHost: x\r\n\r\n")},
		{"binary junk", write("\x00\x00\x00\x00\xff\xff\xff\x7fjunkjunkjunk")},
		{"TLS 1.2 client", tlsClient(&tls.Config{MaxVersion: tls.VersionTLS12}, "")},
		{"TLS 1.3 without certificate", tlsClient(&tls.Config{NextProtos: []string{"h2"}}, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")},
		{"TLS 1.3 then junk", tlsClient(&tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}, "\xff\xff\xff\x7f junk instead of a capnp frame")},
		{"silent", func(_ *testing.T, c net.Conn) net.Conn { return c }},
		{"stalled ClientHello", write("\x16\x03\x01\x02\x00\x01")},
	})
	settles()
	if _, body := httpGet(p.exp.Admin + "/metrics"); strings.Count(body, "\nvatcar_vat_connections{") != 1 {
		t.Errorf("exporter keeps vatcar_vat_connections series of dropped strangers, want only the importer's:\n%s", body)
	}
	if got := scrape(t, p.exp.Admin, "vatcar_vat_refused_connections_total", map[string]string{"reason": "handshake"}); got < 3 {
		t.Errorf("vatcar_vat_refused_connections_total{reason=handshake} = %v, want at least 3 (HTTP, junk, TLS 1.2)", got)
	}
	if out := p.exporter.stderr.String(); !strings.Contains(out, "inbound connection refused") {
		t.Errorf("exporter did not log the refused connections:\n%s", out)
	}
	if _, err := p.client.EmptyCall(ctx, &testpb.Empty{}); err != nil {
		t.Errorf("call after the junk: %v", err)
	}
}

// TestAppPortDropsJunk sends non-HTTP/2 bytes, and nothing at all, to an
// import's gRPC endpoint: the sidecar drops those connections (the silent
// one at the handshake timeout, not grpc-go's 120s), holds nothing
// afterwards, and keeps serving calls.
func TestAppPortDropsJunk(t *testing.T) {
	t.Parallel()
	p, ctx := startCalledPair(t)
	settles := baseline(t, p.imp.Admin)
	expectDropped(t, p.imp.Imports["test"], []junkClient{
		{"HTTP/1.1 request", write("GET / HTTP/1.1\r\nHost: x\r\n\r\n")},
		{"short binary junk", write("\x00\x01\x02junk\xff\xff")},
		{"preface then junk frames", write("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff")},
		{"TLS ClientHello", func(_ *testing.T, c net.Conn) net.Conn {
			tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
			tc.Handshake()
			return tc
		}},
		{"silent", func(_ *testing.T, c net.Conn) net.Conn { return c }},
	})
	settles()
	if _, err := p.client.EmptyCall(ctx, &testpb.Empty{}); err != nil {
		t.Errorf("call after the junk: %v", err)
	}
}
