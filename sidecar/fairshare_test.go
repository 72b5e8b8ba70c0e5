package sidecar

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

// holdStreams opens n FullDuplexCall streams through s's import "test" and
// makes each carry one echo, so each holds a call slot on the exporter
// until ctx ends.
func holdStreams(ctx context.Context, t *testing.T, s *Sidecar, n int) testgrpc.TestServiceClient {
	t.Helper()
	cc, err := grpc.NewClient(s.Addresses().Imports["test"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	client := testgrpc.NewTestServiceClient(cc)
	for i := range n {
		if err := echoOnce(ctx, client); err != nil {
			t.Fatalf("stream %d of %d: %v", i+1, n, err)
		}
	}
	return client
}

// echoOnce opens a stream and waits for one echo; the stream stays open
// until ctx ends. It returns the stream's error, if any.
func echoOnce(ctx context.Context, client testgrpc.TestServiceClient) error {
	st, err := client.FullDuplexCall(ctx)
	if err != nil {
		return err
	}
	if err := st.Send(&testgrpc.StreamingOutputCallRequest{ResponseParameters: []*testgrpc.ResponseParameters{{Size: 1}}}); err != nil {
		_, err = st.Recv()
		return err
	}
	_, err = st.Recv()
	return err
}

// TestFairSharesPerConnection checks that --max-concurrent-calls bounds each
// peer connection's calls on an export, not all peers' together: while
// peers hold their maximum of open streams, up to the export's total, a
// new peer's calls still go through.
func TestFairSharesPerConnection(t *testing.T) {
	const perConn = 4
	backend := startTestBackend(t)
	dir := t.TempDir()
	startTestSidecar(t, Config{
		Listen: "tcp:127.0.0.1:0", CapDir: dir, MaxConcurrentCalls: perConn,
		Exports: []Export{{Name: "test", Target: backend}},
	})
	uri := "@" + filepath.Join(dir, "test.cap")
	importer := func() *Sidecar {
		// An ephemeral key each: a peer, and a connection, of its own.
		return startTestSidecar(t, Config{Imports: []Import{{Name: "test", URI: uri}}})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// One peer holds its maximum; one more stream of its own is refused.
	greedy := holdStreams(ctx, t, importer(), perConn)
	err := echoOnce(ctx, greedy)
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("stream %d of one peer: %v, want RESOURCE_EXHAUSTED", perConn+1, err)
	}

	// Another peer gets calls through, unary and streams, up to its own
	// maximum.
	other := holdStreams(ctx, t, importer(), perConn-1)
	if _, err := other.EmptyCall(ctx, &testgrpc.Empty{}); err != nil {
		t.Fatalf("another peer's call while one holds its maximum: %v", err)
	}

	// Peers fill the export's total (4 x perConn); a new peer still gets a
	// call through (its fair share), and the greedy one still gets none.
	holdStreams(ctx, t, importer(), perConn)
	holdStreams(ctx, t, importer(), perConn)
	newcomer := holdStreams(ctx, t, importer(), 0)
	if _, err := newcomer.EmptyCall(ctx, &testgrpc.Empty{}); err != nil {
		t.Errorf("a new peer's call while the export holds %d calls: %v", 4*perConn-1, err)
	}
	if err := echoOnce(ctx, greedy); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("the greedy peer's stream %d: %v, want RESOURCE_EXHAUSTED", perConn+1, err)
	}
}

// TestStreamIdleTimeout checks --stream-idle-timeout through two sidecars:
// a stream on which nothing passes ends with DEADLINE_EXCEEDED naming the
// flag, and the peer's slot comes back (a stream as large as its limit
// opens afterwards).
func TestStreamIdleTimeout(t *testing.T) {
	backend := startTestBackend(t)
	dir := t.TempDir()
	startTestSidecar(t, Config{
		Listen: "tcp:127.0.0.1:0", CapDir: dir, MaxConcurrentCalls: 1,
		StreamIdleTimeout: Duration(300 * time.Millisecond),
		Exports:           []Export{{Name: "test", Target: backend}},
	})
	importer := startTestSidecar(t, Config{Imports: []Import{{Name: "test", URI: "@" + filepath.Join(dir, "test.cap")}}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := holdStreams(ctx, t, importer, 0)
	st, err := client.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&testgrpc.StreamingOutputCallRequest{ResponseParameters: []*testgrpc.ResponseParameters{{Size: 1}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	_, err = st.Recv()
	if s := status.Convert(err); s.Code() != codes.DeadlineExceeded || !strings.Contains(s.Message(), "--stream-idle-timeout") {
		t.Fatalf("idle stream: %v, want DEADLINE_EXCEEDED naming --stream-idle-timeout", err)
	}
	// Its slot (the only one) is free again, once the exporter has
	// finished the call (just after the status went out).
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := echoOnce(ctx, client)
		if err == nil {
			break
		}
		if status.Code(err) != codes.ResourceExhausted || time.Now().After(deadline) {
			t.Fatalf("a stream after the idle one ended: %v", err)
		}
		time.Sleep(10 * time.Millisecond) // polling interval
	}
}

// TestImportFairSharesPerAppConnection checks the importer's side of fair
// shares, with the same --max-concurrent-calls on both sidecars: one app
// connection holds all the streams an import lets it (half of N), one more
// of its own is refused with RESOURCE_EXHAUSTED naming the import, and
// other apps' calls still go through, the exporter never refusing any.
func TestImportFairSharesPerAppConnection(t *testing.T) {
	const n = 8
	backend := startTestBackend(t)
	dir := t.TempDir()
	startTestSidecar(t, Config{
		Listen: "tcp:127.0.0.1:0", CapDir: dir, MaxConcurrentCalls: n,
		Exports: []Export{{Name: "test", Target: backend}},
	})
	imp := startTestSidecar(t, Config{MaxConcurrentCalls: n, Imports: []Import{{Name: "test", URI: "@" + filepath.Join(dir, "test.cap")}}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	greedy := holdStreams(ctx, t, imp, n/2)
	if err := echoOnce(ctx, greedy); !refusedByImport(err) {
		t.Fatalf("stream %d of one app: %v, want RESOURCE_EXHAUSTED naming the import and the flag", n/2+1, err)
	}
	if _, err := greedy.EmptyCall(ctx, &testgrpc.Empty{}); !refusedByImport(err) {
		t.Fatalf("a unary call of the app at its maximum: %v, want the import's RESOURCE_EXHAUSTED", err)
	}

	// Other apps: each gets calls through while the ones before hold all
	// they can (half of what is free), until one slot is left.
	for app, free := 1, n/2; free > 1; app, free = app+1, free/2 {
		other := holdStreams(ctx, t, imp, 0)
		for i := range 3 {
			if _, err := other.EmptyCall(ctx, &testgrpc.Empty{}); err != nil {
				t.Fatalf("app %d's call %d while others hold %d of %d: %v", app, i, n-free, n, err)
			}
		}
		for i := range free / 2 {
			if err := echoOnce(ctx, other); err != nil {
				t.Fatalf("app %d's stream %d: %v", app, i+1, err)
			}
		}
		if err := echoOnce(ctx, other); !refusedByImport(err) {
			t.Fatalf("app %d's stream %d: %v, want the import's RESOURCE_EXHAUSTED", app, free/2+1, err)
		}
	}
	// Still one slot free for a newcomer.
	if _, err := holdStreams(ctx, t, imp, 0).EmptyCall(ctx, &testgrpc.Empty{}); err != nil {
		t.Errorf("the last newcomer's call: %v", err)
	}
}

// refusedByImport reports whether err is the importer's refusal of a call
// for want of the import's slots (not the exporter's).
func refusedByImport(err error) bool {
	s := status.Convert(err)
	return s.Code() == codes.ResourceExhausted && strings.Contains(s.Message(), `import "test"`) &&
		strings.Contains(s.Message(), "--max-concurrent-calls")
}

// TestImportStreamIdleTimeout checks --stream-idle-timeout on the importer:
// an app's stream on which nothing passes ends with DEADLINE_EXCEEDED
// naming the flag, and its slot of the import comes back.
func TestImportStreamIdleTimeout(t *testing.T) {
	backend := startTestBackend(t)
	dir := t.TempDir()
	startTestSidecar(t, Config{Listen: "tcp:127.0.0.1:0", CapDir: dir, Exports: []Export{{Name: "test", Target: backend}}})
	imp := startTestSidecar(t, Config{
		MaxConcurrentCalls: 2, StreamIdleTimeout: Duration(300 * time.Millisecond), // one stream per app
		Imports: []Import{{Name: "test", URI: "@" + filepath.Join(dir, "test.cap")}},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := holdStreams(ctx, t, imp, 0)
	st, err := client.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&testgrpc.StreamingOutputCallRequest{ResponseParameters: []*testgrpc.ResponseParameters{{Size: 1}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	if err := echoOnce(ctx, client); !refusedByImport(err) {
		t.Fatalf("a second stream of the app: %v, want the import's RESOURCE_EXHAUSTED", err)
	}
	_, err = st.Recv()
	if s := status.Convert(err); s.Code() != codes.DeadlineExceeded || !strings.Contains(s.Message(), "--stream-idle-timeout") {
		t.Fatalf("idle stream: %v, want DEADLINE_EXCEEDED naming --stream-idle-timeout", err)
	}
	// Its slot is free again once the handler has returned.
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := echoOnce(ctx, client)
		if err == nil {
			break
		}
		if status.Code(err) != codes.ResourceExhausted || time.Now().After(deadline) {
			t.Fatalf("a stream after the idle one ended: %v", err)
		}
		time.Sleep(10 * time.Millisecond) // polling interval
	}
}
