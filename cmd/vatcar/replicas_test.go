package main_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

// countingBackend serves the interop TestService on a loopback port and
// counts the calls it serves.
func countingBackend(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	srv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		n.Add(1)
		return h(ctx, req)
	}))
	testgrpc.RegisterTestServiceServer(srv, interop.NewTestServer())
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return ln.Addr().String(), &n
}

// freePortOn returns a TCP port free on every one of hosts now.
func freePortOn(t *testing.T, hosts ...string) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", net.JoinHostPort(hosts[0], "0"))
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		ok := true
		for _, h := range hosts[1:] {
			l, err := net.Listen("tcp", net.JoinHostPort(h, strconv.Itoa(port)))
			if err != nil {
				ok = false
				break
			}
			l.Close()
		}
		if ok {
			return port
		}
	}
	t.Fatal("no port free on every host")
	return 0
}

// replicaSet is three exporting sidecars sharing one key, on 127.0.0.2-4 at
// one port, behind the name replicas.test (a hosts file, not /etc/hosts),
// each in front of its own counting backend.
type replicaSet struct {
	args     [][]string
	procs    []*proc
	served   []*atomic.Int64
	capFile  string
	hostFile string
}

func startReplicas(t *testing.T, extra ...string) *replicaSet {
	t.Helper()
	hosts := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}
	const impostor = "127.0.0.5" // answers at the name with another key
	dir := t.TempDir()
	port := freePortOn(t, append(hosts, impostor)...)
	rs := &replicaSet{capFile: filepath.Join(dir, "r0", "test.cap"), hostFile: filepath.Join(dir, "hosts")}
	table := impostor + " replicas.test\n"
	for _, h := range hosts {
		table += h + " replicas.test\n"
	}
	other, _ := countingBackend(t)
	startSidecar(t, "--listen", fmt.Sprintf("tcp:%s:%d", impostor, port), "--export", "test="+other)
	if err := os.WriteFile(rs.hostFile, []byte(table), 0o600); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, "workload.pem")
	for i, h := range hosts {
		backend, n := countingBackend(t)
		args := append([]string{"--listen", fmt.Sprintf("tcp:%s:%d", h, port),
			"--public-address", fmt.Sprintf("tcp:replicas.test:%d", port),
			"--secret-key-file", key, "--export", "test=" + backend,
			"--cap-dir", filepath.Join(dir, fmt.Sprint("r", i)), "--log-level", "info"}, extra...)
		p, _ := startSidecar(t, args...)
		rs.args, rs.procs, rs.served = append(rs.args, args), append(rs.procs, p), append(rs.served, n)
	}
	for i := 1; i < len(hosts); i++ { // one workload, one URI
		a, _ := os.ReadFile(rs.capFile)
		b, _ := os.ReadFile(filepath.Join(dir, fmt.Sprint("r", i), "test.cap"))
		if len(a) == 0 || string(a) != string(b) {
			t.Fatalf("replicas wrote different cap files")
		}
	}
	return rs
}

// load runs workers that each make unary calls until stop is closed, and
// returns the calls made and the errors seen.
func load(ctx context.Context, client testgrpc.TestServiceClient, workers int, stop <-chan struct{}) (calls *atomic.Int64, wait func() []error) {
	calls = new(atomic.Int64)
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{}); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
				calls.Add(1)
			}
		})
	}
	return calls, func() []error { wg.Wait(); return errs }
}

// TestImportSpreadsCallsOverReplicas has one importer call three exporting
// replicas of one workload behind one name: each serves a fair share; one
// killed mid-load fails at most the calls in flight on it while the others
// take over; restarted, it gets calls again. A fourth address of the name
// is a vat with another key: it is never used, and the importer says why.
func TestImportSpreadsCallsOverReplicas(t *testing.T) {
	rs := startReplicas(t)
	importer, imp := startSidecar(t, "--hosts-file", rs.hostFile, "--import", "test=@"+rs.capFile)
	client := testgrpc.NewTestServiceClient(dial(t, imp.Imports["test"]))
	ctx := ctxTimeout(t, 2*time.Minute)

	const workers = 8
	stop := make(chan struct{})
	calls, wait := load(ctx, client, workers, stop)
	waitFor(t, 30*time.Second, "every replica connected and 900 calls", func() bool {
		return scrape(t, imp.Admin, "vatcar_import_connected_addresses", map[string]string{"import": "test"}) == 3 && calls.Load() >= 900
	})
	before := []int64{rs.served[0].Load(), rs.served[1].Load(), rs.served[2].Load()}
	mark := calls.Load()
	waitFor(t, 30*time.Second, "900 more calls", func() bool { return calls.Load() >= mark+900 })
	var split []int64
	var total int64
	for i, n := range rs.served {
		split = append(split, n.Load()-before[i])
		total += split[i]
	}
	t.Logf("calls per replica with all three up: %v", split)
	for i, n := range split {
		if n < total/6 { // a fair share is a third
			t.Errorf("replica %d served %d of %d calls, want at least a sixth", i, n, total)
		}
	}

	// Kill the third replica mid-load.
	rs.procs[2].cmd.Process.Kill()
	<-rs.procs[2].done
	mark = calls.Load()
	waitFor(t, 30*time.Second, "900 calls after the kill", func() bool { return calls.Load() >= mark+900 })
	killed := rs.served[2].Load()

	// Restart it: it gets calls again once the importer reconnects.
	p, _ := startSidecar(t, rs.args[2]...)
	rs.procs[2] = p
	waitFor(t, 30*time.Second, "the restarted replica serves calls", func() bool { return rs.served[2].Load() > killed+50 })
	close(stop)
	errs := wait()
	if log := importer.stderr.String(); !strings.Contains(log, "127.0.0.5") || !strings.Contains(log, "vat key mismatch") {
		t.Errorf("importer log does not name the address with the wrong key:\n%s", log)
	}
	t.Logf("%d calls in all, %d failed", calls.Load(), len(errs))
	if len(errs) > workers {
		t.Errorf("%d calls failed, want at most the %d in flight when the replica died", len(errs), workers)
	}
	for _, err := range errs {
		if status.Code(err) != codes.Unavailable {
			t.Errorf("failed call: %v, want UNAVAILABLE", err)
		}
	}
}

// TestReplicasSharingAKeyImportWithoutFailures has three importing sidecars
// that share one key (a workload that exports too) call one exporter at
// once: no connection replaces another, and no call fails.
func TestReplicasSharingAKeyImportWithoutFailures(t *testing.T) {
	p := startPair(t)
	key := filepath.Join(t.TempDir(), "workload.pem")
	ctx := ctxTimeout(t, 2*time.Minute)
	var wg sync.WaitGroup
	var failed atomic.Int64
	var firstErr atomic.Value
	const perImporter = 400
	for range 3 {
		_, imp := startSidecar(t, "--secret-key-file", key, "--import", "test=@"+p.capFile)
		client := testgrpc.NewTestServiceClient(dial(t, imp.Imports["test"]))
		for range 4 {
			wg.Go(func() {
				for range perImporter / 4 {
					if _, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{}); err != nil {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, err)
					}
				}
			})
		}
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d calls failed; first: %v", n, 3*perImporter, firstErr.Load())
	}
	if got := scrape(t, p.exp.Admin, "vatcar_vat_connections", nil); got != 3 {
		t.Errorf("exporter connections: %v, want 3 (one per importer)", got)
	}
}

// TestAppUnavailableKeepsTheImport has the backend answer UNAVAILABLE "db
// disconnected" itself: the status reaches the client unchanged, and the
// import keeps its capability (no new connect), since the origin of a
// failure is a typed signal, not the status text.
func TestAppUnavailableKeepsTheImport(t *testing.T) {
	p := startPair(t)
	ctx := ctxTimeout(t, time.Minute)
	if _, err := p.client.EmptyCall(ctx, &testgrpc.Empty{}); err != nil {
		t.Fatal(err)
	}
	connects := func() float64 {
		return scrape(t, p.imp.Admin, "vatcar_import_connects_total", map[string]string{"import": "test", "result": "ok"})
	}
	before := connects()
	for range 3 {
		_, err := p.client.UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseStatus: &testgrpc.EchoStatus{Code: int32(codes.Unavailable), Message: "db disconnected"}})
		if status.Code(err) != codes.Unavailable || status.Convert(err).Message() != "db disconnected" {
			t.Fatalf("app's status: got %v, want UNAVAILABLE \"db disconnected\"", err)
		}
	}
	if _, err := p.client.EmptyCall(ctx, &testgrpc.Empty{}); err != nil {
		t.Fatal(err)
	}
	if after := connects(); after != before {
		t.Errorf("import connected %v times after the app's UNAVAILABLE, want %v (capability kept)", after, before)
	}
}
