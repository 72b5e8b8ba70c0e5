package sidecar

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
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// edgeBackend is the interop test server whose UnaryCall also hangs until
// its context ends (fill_oauth_scope set) and fails with details
// (fill_server_id set).
type edgeBackend struct {
	testgrpc.TestServiceServer
	started chan struct{}
	ended   chan error
}

func (b *edgeBackend) UnaryCall(ctx context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	switch {
	case req.GetFillOauthScope():
		b.started <- struct{}{}
		<-ctx.Done()
		b.ended <- ctx.Err()
		return nil, ctx.Err()
	case req.GetFillServerId():
		st, err := status.New(codes.FailedPrecondition, "bad request").WithDetails(wrapperspb.String("why"))
		if err != nil {
			return nil, err
		}
		return nil, st.Err()
	}
	return b.TestServiceServer.UnaryCall(ctx, req)
}

// startEdgePair is a sidecar pair (the importer's unary calls take the
// engine's direct path) in front of an edgeBackend.
func startEdgePair(t *testing.T) (*testPair, *edgeBackend) {
	t.Helper()
	be := &edgeBackend{TestServiceServer: interop.NewTestServer(), started: make(chan struct{}, 4), ended: make(chan error, 4)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(srv, be)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	dir := t.TempDir()
	p := &testPair{capDir: dir}
	p.exporter = startTestSidecar(t, Config{
		Listen: "tcp:127.0.0.1:0", SecretKeyFile: filepath.Join(dir, "k.pem"), CapDir: dir,
		Exports: []Export{{Name: "test", Target: ln.Addr().String()}},
	})
	p.importer = startTestSidecar(t, Config{
		Imports: []Import{{Name: "test", URI: "@" + filepath.Join(dir, "test.cap")}},
	})
	cc, err := grpc.NewClient(p.importer.Addresses().Imports["test"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	p.client = testgrpc.NewTestServiceClient(cc)
	return p, be
}

func waitStarted(t *testing.T, be *edgeBackend) {
	t.Helper()
	select {
	case <-be.started:
	case <-time.After(30 * time.Second):
		t.Fatal("the call did not reach the backend")
	}
}

func backendEnded(t *testing.T, be *edgeBackend) error {
	t.Helper()
	select {
	case err := <-be.ended:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("the backend's call was not cancelled")
		return nil
	}
}

// TestPairUnaryStatuses: through a sidecar pair, unary calls end as the
// client expects: OK, an app error with details, DEADLINE_EXCEEDED and
// CANCELLED (the backend's call is cancelled in both).
func TestPairUnaryStatuses(t *testing.T) {
	p, be := startEdgePair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := p.client.UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseSize: 10})
	if err != nil || len(resp.GetPayload().GetBody()) != 10 {
		t.Fatalf("UnaryCall = %v, %v", resp, err)
	}

	_, err = p.client.UnaryCall(ctx, &testgrpc.SimpleRequest{FillServerId: true})
	st := status.Convert(err)
	if st.Code() != codes.FailedPrecondition || st.Message() != "bad request" || len(st.Details()) != 1 {
		t.Fatalf("app error: %v (details %v)", err, st.Details())
	}
	if d, ok := st.Details()[0].(*wrapperspb.StringValue); !ok || d.GetValue() != "why" {
		t.Fatalf("details %v", st.Details())
	}

	dctx, dcancel := context.WithTimeout(ctx, 2*time.Second) // time to reach the backend, even on a busy machine
	defer dcancel()
	if _, err := p.client.UnaryCall(dctx, &testgrpc.SimpleRequest{FillOauthScope: true}); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("deadline: %v", err)
	}
	select {
	case <-be.started:
		if err := backendEnded(t, be); err == nil {
			t.Fatal("backend call ended without an error")
		}
	case <-time.After(30 * time.Second):
		// The deadline passed before the call reached the backend.
	}

	cctx, ccancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := p.client.UnaryCall(cctx, &testgrpc.SimpleRequest{FillOauthScope: true})
		done <- err
	}()
	waitStarted(t, be)
	ccancel()
	if err := <-done; status.Code(err) != codes.Canceled {
		t.Fatalf("cancel: %v", err)
	}
	if err := backendEnded(t, be); err != context.Canceled {
		t.Fatalf("backend call ended with %v, want context.Canceled", err)
	}
}

// TestPairUnaryConnectionLost: the CapTP connection between the sidecars
// breaks under a unary call (a proxy between them drops it): the client
// gets UNAVAILABLE.
func TestPairUnaryConnectionLost(t *testing.T) {
	p, be := startEdgePair(t)
	// A second import of the same export, through a proxy.
	capFile := filepath.Join(p.capDir, "test.cap")
	b, err := os.ReadFile(capFile)
	if err != nil {
		t.Fatal(err)
	}
	uri := strings.TrimSpace(string(b))
	at, slash := strings.Index(uri, "@"), strings.LastIndex(uri, "/")
	if at < 0 || slash < at {
		t.Fatalf("cap file URI of unexpected form")
	}
	px := startProxy(t, uri[at+1:slash])
	proxied := filepath.Join(p.capDir, "proxied.cap")
	if err := os.WriteFile(proxied, []byte(uri[:at+1]+px.addr+uri[slash:]+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	importer := startTestSidecar(t, Config{Imports: []Import{{Name: "proxied", URI: "@" + proxied}}})
	cc, err := grpc.NewClient(importer.Addresses().Imports["proxied"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := testgrpc.NewTestServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseSize: 1}); err != nil {
		t.Fatalf("call through the proxy: %v", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{FillOauthScope: true})
		done <- err
	}()
	waitStarted(t, be)
	px.cut()
	if err := <-done; status.Code(err) != codes.Unavailable {
		t.Fatalf("call under a lost connection: %v, want UNAVAILABLE", err)
	}
	backendEnded(t, be)
}

// proxy forwards TCP connections to a target until cut.
type proxy struct {
	addr  string
	mu    sync.Mutex
	conns []net.Conn // guarded by mu
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	px := &proxy{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		px.cut()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			px.mu.Lock()
			px.conns = append(px.conns, c, u)
			px.mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(u, c); u.Close() }()
			go func() { defer wg.Done(); io.Copy(c, u); c.Close() }()
		}
	}()
	return px
}

// cut closes every connection the proxy carries.
func (px *proxy) cut() {
	px.mu.Lock()
	defer px.mu.Unlock()
	for _, c := range px.conns {
		c.Close()
	}
	px.conns = nil
}

// TestPairUnaryExporterClosed: the exporting sidecar closes under a unary
// call: the client gets UNAVAILABLE (retryable), not UNKNOWN with the
// exporter's cancelled context in the message, and the backend's call is
// cancelled.
func TestPairUnaryExporterClosed(t *testing.T) {
	p, be := startEdgePair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := p.client.UnaryCall(ctx, &testgrpc.SimpleRequest{FillOauthScope: true})
		done <- err
	}()
	waitStarted(t, be)
	if err := p.exporter.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; status.Code(err) != codes.Unavailable {
		t.Fatalf("call under a closed exporter: %v, want UNAVAILABLE", err)
	}
	backendEnded(t, be)
}

// TestPairCancelledCallsKeepTheCapability: calls the client cancels or
// lets run past their deadline are no CapTP failure: the importer keeps
// its restored capability (no new connect) and the next call passes.
func TestPairCancelledCallsKeepTheCapability(t *testing.T) {
	p, be := startEdgePair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := p.client.UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseSize: 1}); err != nil {
		t.Fatal(err)
	}
	connects := counterValue(t, p.importer.Metrics(), "vatcar_import_connects_total", "import", "test")
	for range 3 {
		cctx, ccancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			_, err := p.client.UnaryCall(cctx, &testgrpc.SimpleRequest{FillOauthScope: true})
			done <- err
		}()
		waitStarted(t, be)
		ccancel()
		if err := <-done; status.Code(err) != codes.Canceled {
			t.Fatalf("cancelled call: %v", err)
		}
		backendEnded(t, be)
		if _, err := p.client.UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseSize: 1}); err != nil {
			t.Fatalf("call after a cancelled one: %v", err)
		}
	}
	if got := counterValue(t, p.importer.Metrics(), "vatcar_import_connects_total", "import", "test"); got != connects {
		t.Errorf("the importer connected %v times after cancelled calls (%v before), want none", got-connects, connects)
	}
}
