package main_test

import (
	"context"
	"crypto/tls"
	bin "encoding/binary"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

// maxAttackRSS is the resident memory a sidecar under one of issue 14's
// attacks must stay under, in these tests' bounded loads (the issue saw
// 531-647 MB before the fixes; a sidecar at rest holds about 25 MiB).
const maxAttackRSS = 300 << 20

// callCount is what keepCalling saw.
type callCount struct {
	ok, failed int
	err        error         // the first failure
	slowest    time.Duration // of the calls that succeeded
}

// keepCalling makes EmptyCalls on client one after another, until the
// returned function is called; that function waits for the last call and
// returns the counts. (The legitimate importer, during an attack.)
func keepCalling(ctx context.Context, client testpb.TestServiceClient) func() callCount {
	stop := make(chan struct{})
	done := make(chan callCount, 1)
	go func() {
		var n callCount
		for {
			select {
			case <-stop:
				done <- n
				return
			default:
			}
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			start := time.Now()
			_, err := client.EmptyCall(cctx, &testpb.Empty{})
			took := time.Since(start)
			cancel()
			if err != nil {
				n.failed++
				if n.err == nil {
					n.err = err
				}
				continue
			}
			n.ok++
			n.slowest = max(n.slowest, took)
		}
	}()
	return func() callCount {
		close(stop)
		return <-done
	}
}

// echoStream opens a FullDuplexCall stream and waits for one echo; the
// stream stays open until ctx ends. It returns the stream's error, if any.
func echoStream(ctx context.Context, client testpb.TestServiceClient) error {
	st, err := client.FullDuplexCall(ctx)
	if err != nil {
		return err
	}
	// A Send on a stream the server already ended fails with io.EOF; the
	// status comes from Recv either way.
	_ = st.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 1}}})
	_, err = st.Recv()
	return err
}

// streamLoad is what openStreams saw.
type streamLoad struct {
	opened, refused int64          // streams that carried their echo; RESOURCE_EXHAUSTED
	refusals        map[string]int // refusal messages, with their counts
	took            time.Duration
}

// openStreams opens n streams on client (echoStream, 32 at a time), each
// held open until ctx ends, and counts how they went; any outcome other
// than an echo or RESOURCE_EXHAUSTED fails the test.
func openStreams(ctx context.Context, t *testing.T, client testpb.TestServiceClient, n int) streamLoad {
	t.Helper()
	var opened, refused atomic.Int64
	var mu sync.Mutex
	refusals := map[string]int{}
	var other sync.Map // unexpected errors, by code
	jobs := make(chan struct{}, n)
	for range n {
		jobs <- struct{}{}
	}
	close(jobs)
	var wg sync.WaitGroup
	start := time.Now()
	for range 32 {
		wg.Go(func() {
			for range jobs {
				err := echoStream(ctx, client)
				switch status.Code(err) {
				case codes.OK:
					opened.Add(1)
				case codes.ResourceExhausted:
					refused.Add(1)
					mu.Lock()
					refusals[status.Convert(err).Message()]++
					mu.Unlock()
				default:
					other.Store(status.Code(err), err)
				}
			}
		})
	}
	wg.Wait()
	other.Range(func(code, err any) bool {
		t.Errorf("stream: %v (code %v)", err, code)
		return true
	})
	return streamLoad{opened: opened.Load(), refused: refused.Load(), refusals: refusals, took: time.Since(start)}
}

// TestOnePeerCannotTakeAnExport is the attack of issue 14's first row,
// against the built binary with the default --max-concurrent-calls (1024):
// one importer's app opens 1,100 streams on an export and keeps them open;
// the exporter refuses that peer's streams past 1,024, and another
// importer's calls and streams still go through. (The attacker's sidecar
// runs with a higher --max-concurrent-calls, so that its own share of the
// import among its apps lets all 1,100 through to the exporter.)
func TestOnePeerCannotTakeAnExport(t *testing.T) {
	if testing.Short() {
		t.Skip("1,100 streams through two sidecars")
	}
	const streams, perConn = 1100, 1024
	p := startPairArgs(t, []string{"--max-concurrent-calls", "4096"}) // exporter with --max-concurrent-calls at its default
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	if _, err := p.client.EmptyCall(ctx, &testpb.Empty{}); err != nil {
		t.Fatal(err)
	}
	goroutinesBefore := scrape(t, p.exp.Health, "go_goroutines", nil)

	// The attacker: 1,100 streams through its sidecar, each carrying one
	// echo and then held open until the test ends.
	load := openStreams(ctx, t, p.client, streams)
	if load.opened != perConn || load.refused != streams-perConn {
		t.Errorf("attacker: %d streams open, %d refused; want %d and %d", load.opened, load.refused, perConn, streams-perConn)
	}
	if got := scrape(t, p.exp.Health, "vatcar_refused_calls_total", map[string]string{"side": "egress", "reason": "connection"}); got != float64(load.refused) {
		t.Errorf("exporter counted %v calls refused for the connection, want %d", got, load.refused)
	}
	goroutinesHeld := scrape(t, p.exp.Health, "go_goroutines", nil)
	rss := scrape(t, p.exp.Health, "process_resident_memory_bytes", nil)
	if rss > maxAttackRSS {
		t.Errorf("exporter RSS %.0f MiB with %d streams held, want under %d MiB", rss/(1<<20), load.opened, maxAttackRSS>>20)
	}

	// Another importer (its own key, its own connection) gets calls and
	// streams through while the attacker holds its maximum.
	_, second := startSidecar(t, "--import", "test=@"+p.capFile)
	victim := testpb.NewTestServiceClient(dial(t, second.Imports["test"]))
	for i := range 20 {
		if _, err := victim.EmptyCall(ctx, &testpb.Empty{}); err != nil {
			t.Fatalf("another importer's call %d during the attack: %v", i, err)
		}
	}
	if err := echoStream(ctx, victim); err != nil {
		t.Errorf("another importer's stream during the attack: %v", err)
	}
	t.Logf("attacker: %d streams open, %d refused in %v (%v); exporter goroutines %v -> %v, RSS %.0f MiB",
		load.opened, load.refused, load.took.Round(time.Millisecond), load.refusals, goroutinesBefore, goroutinesHeld, rss/(1<<20))
}

// TestOneAppCannotTakeAnImport is the importer's side of issue 14's first
// row, against the built binaries with the default --max-concurrent-calls
// (1024) on both: one app (one gRPC connection to the import) opens 1,100
// streams and keeps them open. The importer lets it hold 512 (half of what
// the exporter grants the connection) and refuses the rest with its own
// RESOURCE_EXHAUSTED; another app's unary calls and a stream pass
// meanwhile, and the exporter refuses nothing. (Before: the app got 1,024
// streams, the exporter refused the rest, and so every other app's call.)
func TestOneAppCannotTakeAnImport(t *testing.T) {
	if testing.Short() {
		t.Skip("1,100 streams through two sidecars")
	}
	const streams, perApp = 1100, 512
	p := startPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	if _, err := p.client.EmptyCall(ctx, &testpb.Empty{}); err != nil {
		t.Fatal(err)
	}
	goroutinesBefore := scrape(t, p.imp.Health, "go_goroutines", nil)
	rssBefore := scrape(t, p.imp.Health, "process_resident_memory_bytes", nil)

	load := openStreams(ctx, t, p.client, streams)
	if load.opened != perApp || load.refused != streams-perApp {
		t.Errorf("greedy app: %d streams open, %d refused; want %d and %d", load.opened, load.refused, perApp, streams-perApp)
	}
	for msg := range load.refusals {
		if !strings.Contains(msg, `import "test"`) || !strings.Contains(msg, "--max-concurrent-calls") {
			t.Errorf("a refusal not the importer's: %q", msg)
		}
	}
	if got := scrape(t, p.imp.Health, "vatcar_refused_calls_total", map[string]string{"side": "ingress", "reason": "import"}); got != float64(load.refused) {
		t.Errorf("importer counted %v calls refused for the import's share, want %d", got, load.refused)
	}
	goroutinesHeld := scrape(t, p.imp.Health, "go_goroutines", nil)
	rssHeld := scrape(t, p.imp.Health, "process_resident_memory_bytes", nil)

	// Another app of the pod: its own gRPC connection to the same import.
	other := testpb.NewTestServiceClient(dial(t, p.imp.Imports["test"]))
	for i := range 20 {
		if _, err := other.EmptyCall(ctx, &testpb.Empty{}); err != nil {
			t.Fatalf("another app's call %d while one holds its maximum: %v", i, err)
		}
	}
	if err := echoStream(ctx, other); err != nil {
		t.Errorf("another app's stream while one holds its maximum: %v", err)
	}
	t.Logf("greedy app: %d streams open, %d refused in %v; importer goroutines %v -> %v, RSS %.0f -> %.0f MiB",
		load.opened, load.refused, load.took.Round(time.Millisecond), goroutinesBefore, goroutinesHeld, rssBefore/(1<<20), rssHeld/(1<<20))
	if rssHeld > maxAttackRSS {
		t.Errorf("importer RSS %.0f MiB with %d streams held, want under %d MiB", rssHeld/(1<<20), load.opened, maxAttackRSS>>20)
	}
}

// TestIdleStrangersDoNotLockOut is issue 14's fifth row against the built
// binary: 1,030 TLS connections with fresh keys that never restore fill
// the exporter's 1,024 slots; a legitimate importer still connects (the
// oldest stranger past the 3 s grace makes room) and its calls pass.
func TestIdleStrangersDoNotLockOut(t *testing.T) {
	if testing.Short() {
		t.Skip("1,030 TLS connections")
	}
	const strangers = 1030
	backend := startBackend(t)
	dir := t.TempDir()
	_, exp := startSidecar(t, "--listen", "tcp:127.0.0.1:0", "--export", "test="+backend, "--cap-dir", dir)
	target := exp.Listen[len("tcp:"):]
	var wg sync.WaitGroup
	var connected, refused atomic.Int64
	var mu sync.Mutex
	var conns []net.Conn
	jobs := make(chan struct{}, strangers)
	for range strangers {
		jobs <- struct{}{}
	}
	close(jobs)
	start := time.Now()
	for range 16 {
		wg.Go(func() {
			for range jobs {
				c, err := tls.Dial("tcp", target, &tls.Config{
					Certificates: []tls.Certificate{selfSigned(t)}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13,
				})
				if err != nil {
					refused.Add(1)
					continue
				}
				connected.Add(1)
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	held := scrape(t, exp.Health, "vatcar_vat_connections", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, imp := startSidecar(t, "--import", "test=@"+filepath.Join(dir, "test.cap"))
	client := testpb.NewTestServiceClient(dial(t, imp.Imports["test"]))
	dialled := time.Since(start)
	var err error
	waitFor(t, 30*time.Second, "the importer's call to pass", func() bool {
		_, err = client.EmptyCall(ctx, &testpb.Empty{})
		return err == nil
	})
	t.Logf("%d strangers connected, %d refused (exporter peers %v); importer served %v after the last stranger; evicted %v",
		connected.Load(), refused.Load(), held, (time.Since(start) - dialled).Round(time.Millisecond),
		scrape(t, exp.Health, "vatcar_vat_refused_connections_total", map[string]string{"reason": "evicted idle"}))
	if got := scrape(t, exp.Health, "vatcar_vat_refused_connections_total", map[string]string{"reason": "evicted idle"}); got < 1 {
		t.Errorf("no stranger evicted as idle: %v", got)
	}
	if rss := scrape(t, exp.Health, "process_resident_memory_bytes", nil); rss > maxAttackRSS {
		t.Errorf("exporter RSS %.0f MiB with %d strangers connected, want under %d MiB", rss/(1<<20), connected.Load(), maxAttackRSS>>20)
	} else {
		t.Logf("exporter RSS %.0f MiB", rss/(1<<20))
	}
}

// TestClaimedMessageSizesCostNothing is issue 14's fourth row against the
// built binary: 10 TLS connections each send a capnp frame header claiming
// 60 MiB and then a byte now and then. The exporter's memory grows with
// what arrived, not with the claims (before: RSS 647 MB). The test reads
// the Go heap in use: a claimed buffer's untouched pages need not show in
// RSS at once, but they are the process's to touch.
func TestClaimedMessageSizesCostNothing(t *testing.T) {
	p, ctx := startCalledPair(t)
	target := p.exp.Listen[len("tcp:"):]
	heapBefore := scrape(t, p.exp.Health, "go_memstats_heap_inuse_bytes", nil)
	hdr := make([]byte, 8)
	bin.LittleEndian.PutUint32(hdr[4:], (60<<20)/8) // one segment of 60 MiB
	var conns []*tls.Conn
	for range 10 {
		c, err := tls.Dial("tcp", target, &tls.Config{
			Certificates: []tls.Certificate{selfSigned(t)}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := c.Write(append(hdr, make([]byte, 4096)...)); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// Trickle a little more, then see what the exporter holds.
	for _, c := range conns {
		if _, err := c.Write(make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 20*time.Second, "the exporter to hold the connections", func() bool {
		return scrape(t, p.exp.Health, "vatcar_vat_connections", nil) >= 11
	})
	heap := scrape(t, p.exp.Health, "go_memstats_heap_inuse_bytes", nil)
	t.Logf("exporter heap in use %.0f MiB before, %.0f MiB with 10 connections claiming 60 MiB each", heapBefore/(1<<20), heap/(1<<20))
	if heap-heapBefore > 100<<20 {
		t.Errorf("exporter heap grew by %.0f MiB: the claimed sizes were allocated", (heap-heapBefore)/(1<<20))
	}
	// The legitimate importer is still served.
	if _, err := p.client.EmptyCall(ctx, &testpb.Empty{}); err != nil {
		t.Errorf("importer's call during the trickle: %v", err)
	}
}

// TestUnfinishedRestoresCloseTheConnection is issue 14's second row against
// the built binary: one TLS connection makes 200,000 restores (Bootstrap
// messages) and never finishes them nor reads the answers. Past the answer
// budget (32,768) its calls are refused; it holds twice that, or its
// unread replies stall the exporter's writes for 15 s, whichever comes
// first, and the exporter closes that connection and counts it; its heap
// stays bounded, and another importer is served.
func TestUnfinishedRestoresCloseTheConnection(t *testing.T) {
	p, ctx := startCalledPair(t)
	target := p.exp.Listen[len("tcp:"):]
	c, err := tls.Dial("tcp", target, &tls.Config{
		Certificates: []tls.Certificate{selfSigned(t)}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const restores = 200000
	legit := keepCalling(ctx, p.client) // the legitimate importer, during the attack
	enc := capnp.NewEncoder(c)
	sent := 0
	for i := range restores {
		msg, seg := capnp.NewMultiSegmentMessage(nil)
		m, err := rpccp.NewRootMessage(seg)
		if err != nil {
			t.Fatal(err)
		}
		b, err := m.NewBootstrap()
		if err != nil {
			t.Fatal(err)
		}
		b.SetQuestionId(uint32(i))
		if err := enc.Encode(msg); err != nil {
			break // the exporter closed the connection
		}
		sent++
	}
	closed := func(reason string) float64 {
		return scrape(t, p.exp.Health, "vatcar_vat_refused_connections_total", map[string]string{"reason": reason})
	}
	waitFor(t, 90*time.Second, "the exporter to close the connection over its answer budget or send queue", func() bool {
		return closed("answer budget")+closed("send queue") == 1
	})
	calls := legit()
	// The live heap (as the last collection found it) is the bound; the
	// heap in use also counts garbage not yet collected, up to GOGC
	// (200%) more, and read right at the close it was 100-220 MiB from
	// run to run under -race with the same live heap.
	live := scrape(t, p.exp.Health, "go_gc_heap_live_bytes", nil)
	heap := scrape(t, p.exp.Health, "go_memstats_heap_inuse_bytes", nil)
	rss := scrape(t, p.exp.Health, "process_resident_memory_bytes", nil)
	t.Logf("%d restores sent before the close (answer budget %v, send queue %v); exporter live heap %.0f MiB, heap in use %.0f MiB, RSS %.0f MiB; importer's calls during the attack: %d ok, %d failed",
		sent, closed("answer budget"), closed("send queue"), live/(1<<20), heap/(1<<20), rss/(1<<20), calls.ok, calls.failed)
	if live > 200<<20 {
		t.Errorf("exporter live heap %.0f MiB after the attack", live/(1<<20))
	}
	if rss > maxAttackRSS {
		t.Errorf("exporter RSS %.0f MiB after the attack, want under %d MiB", rss/(1<<20), maxAttackRSS>>20)
	}
	if calls.ok == 0 || calls.failed > 0 {
		t.Errorf("the importer's calls during the attack: %d ok, %d failed (first error: %v)", calls.ok, calls.failed, calls.err)
	}
	if _, err := p.client.EmptyCall(ctx, &testpb.Empty{}); err != nil {
		t.Errorf("importer's call after the attack: %v", err)
	}
}
