package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestRunDirectWritesSaneResults runs the whole harness on the direct path with a tiny
// budget and checks the files it writes, not its speed: every scenario measures at
// least one operation however slow the machine is (see window).
func TestRunDirectWritesSaneResults(t *testing.T) {
	out := filepath.Join(t.TempDir(), "r.json")
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"--paths", "direct", "--warmup", "1ms", "--duration", "1s", "--out", out}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("run: %v\nstderr:\n%s", err, stderr.String())
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	// The shape, key by key: the issue fixes these names.
	var shape map[string][]map[string]any
	if err := json.Unmarshal(raw, &shape); err != nil {
		t.Fatalf("decode %s: %v", raw, err)
	}
	if len(shape) != 1 || shape["results"] == nil {
		t.Fatalf("top-level keys: got %v, want only results", keys(shape))
	}
	wantKeys := []string{"calls_per_s", "harness_cpu_ms_per_kcall", "mb_per_s", "p50_us", "p99_us", "path", "proxy_cpu_ms_per_kcall", "proxy_rss_mib", "scenario"}
	for _, row := range shape["results"] {
		if got := keys(row); !slices.Equal(got, wantKeys) {
			t.Fatalf("row keys: got %v, want %v", got, wantKeys)
		}
	}
	var rep Report
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) != len(allScenarios) {
		t.Fatalf("got %d rows, want one per scenario (%d)", len(rep.Results), len(allScenarios))
	}
	for i, r := range rep.Results {
		sc := allScenarios[i]
		if r.Scenario != sc.Name || r.Path != pathDirect {
			t.Errorf("row %d: got %s/%s, want %s/direct", i, r.Scenario, r.Path, sc.Name)
		}
		if r.CallsPerS <= 0 {
			t.Errorf("%s: got %v calls/s, want > 0", r.Scenario, r.CallsPerS)
		}
		// Every op carries Size bytes back: MB/s follows from calls/s, up to
		// the report's rounding of both: calls/s to 0.1 (at 0.5 calls/s of
		// 4 MiB, a loaded machine under -race, that alone is 10%), MB/s to
		// 0.01 (which a slow machine's 100-byte scenarios come near).
		want := r.CallsPerS * float64(sc.Size) / 1e6
		if slack := max(0.05*want, 0.05*float64(sc.Size)/1e6) + 0.005; math.Abs(r.MBPerS-want) > slack {
			t.Errorf("%s: got %v MB/s, want about %v from %v calls/s of %d bytes", r.Scenario, r.MBPerS, want, r.CallsPerS, sc.Size)
		}
		if sc.Kind == stream {
			if r.P50us != 0 || r.P99us != 0 {
				t.Errorf("%s: got p50 %v p99 %v, want 0 for a stream", r.Scenario, r.P50us, r.P99us)
			}
		} else if r.P50us <= 0 || r.P99us < r.P50us {
			t.Errorf("%s: got p50 %v p99 %v, want 0 < p50 <= p99", r.Scenario, r.P50us, r.P99us)
		}
		if r.HarnessCPUmsPerKcall <= 0 {
			t.Errorf("%s: got harness CPU %v ms per 1k calls, want > 0 (the load generator and backend run)", r.Scenario, r.HarnessCPUmsPerKcall)
		}
		if r.ProxyCPUmsPerKcall != 0 || r.ProxyRSSMiB != 0 {
			t.Errorf("%s: direct has no proxy, got cpu %v rss %v", r.Scenario, r.ProxyCPUmsPerKcall, r.ProxyRSSMiB)
		}
	}
	md, err := os.ReadFile(markdownPath(out))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(md, stdout.Bytes()) {
		t.Errorf("stdout differs from %s", markdownPath(out))
	}
	for _, sc := range allScenarios {
		if !strings.Contains(string(md), "| "+sc.Name+" | direct | ") {
			t.Errorf("Markdown has no row for %s on direct:\n%s", sc.Name, md)
		}
	}
	if strings.Contains(string(md), "Failed calls") {
		t.Errorf("calls failed on the direct path:\n%s", md)
	}
	if !strings.Contains(string(md), "The harness's own CPU") || !strings.Contains(string(md), "unary-100B-c1 ") {
		t.Errorf("Markdown does not give the harness's CPU per call on direct:\n%s", md)
	}
	if strings.Contains(string(md), "grpcgo-tls is a reference") || strings.Contains(string(md), "grpcgo-h2c is a reference") {
		t.Errorf("Markdown explains grpcgo-tls or grpcgo-h2c in a run without them:\n%s", md)
	}
}

// TestOpenStreamsHoldsEveryStream opens streams against the backend itself and checks
// that each made its round trip.
func TestOpenStreamsHoldsEveryStream(t *testing.T) {
	be, err := startBackend()
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	h := newHeldStreams(context.Background())
	defer h.Close()
	if err := h.Open(be.Addr(), 200, 30*time.Second); err != nil {
		t.Fatalf("Open: %v", err)
	}
	if h.opened != 200 {
		t.Errorf("opened: got %d, want 200", h.opened)
	}
}

// findPeer finds a peer proxy's binary for a test, installing Debian's package as the
// harness does when it is missing and the test runs as root. It skips the test only
// when the proxy is missing and cannot be installed, and fails it then under CI
// (CI=true), whose tools/install.sh installs both peers.
func findPeer(t *testing.T, name string) string {
	t.Helper()
	bin, err := findDebianBinary(context.Background(), name, "", true, t.Logf)
	if errors.Is(err, errSkipped) {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s under CI: %v (tools/install.sh installs it)", name, err)
		}
		t.Skipf("%s: %v", name, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// carriesCalls runs a unary scenario and the stream scenario through p briefly and
// checks that calls went through without errors and that the proxies' costs were
// measured. It asserts nothing about speed.
func carriesCalls(t *testing.T, p path) {
	t.Helper()
	cc, err := dial(p.Target())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	for _, name := range []string{"unary-100B-c16", "stream-1KiB", "pingpong-c1"} {
		i := slices.IndexFunc(allScenarios, func(sc scenario) bool { return sc.Name == name })
		m := runScenario(context.Background(), cc, allScenarios[i], time.Millisecond, 300*time.Millisecond, pids(p), nil, nil)
		if m.errs != 0 || m.ops == 0 {
			t.Fatalf("%s: got %d operations and %d errors (last %v), want operations and no errors", name, m.ops, m.errs, m.lastEr)
		}
		if m.rss <= 0 {
			t.Errorf("%s: proxy RSS: got %d, want > 0", name, m.rss)
		}
	}
	if err := p.Exited(); err != nil {
		t.Errorf("a proxy exited: %v", err)
	}
}

// TestNginxPairCarriesCalls brings up the nginx-tls path and runs calls through it,
// with its proxy costs.
func TestNginxPairCarriesCalls(t *testing.T) {
	bin := findPeer(t, "nginx")
	be, err := startBackend()
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	p, err := startNginx(context.Background(), bin, t.TempDir(), be.Addr())
	if err != nil {
		t.Fatalf("startNginx: %v", err)
	}
	defer p.Close()
	if n := len(pids(p)); n != 4 {
		t.Errorf("proxy processes: got %d, want 4 (two masters, two workers)", n)
	}
	carriesCalls(t, p)
}

// TestHAProxyPairCarriesCalls brings up the haproxy-tls path and runs unary,
// server-streaming and bidi calls through it, with its proxy costs; then checks that
// the hop between the two instances is TLS 1.3 with ALPN h2, as the configuration
// says.
func TestHAProxyPairCarriesCalls(t *testing.T) {
	bin := findPeer(t, "haproxy")
	be, err := startBackend()
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	dir := t.TempDir()
	p, err := startHAProxy(context.Background(), bin, dir, be.Addr())
	if err != nil {
		t.Fatalf("startHAProxy: %v", err)
	}
	defer p.Close()
	if p.Name() != "haproxy-tls" {
		t.Errorf("name: got %q, want haproxy-tls", p.Name())
	}
	ins := p.Instances()
	if len(ins) != 2 || len(pids(p)) != 2 {
		t.Errorf("instances %+v: want two, one process each (nbthread 1, no master)", ins)
	}
	for _, pid := range pids(p) {
		if tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid)); err != nil || len(tasks) != 1 {
			t.Errorf("haproxy %d: got %d threads (%v), want 1 (nbthread 1)", pid, len(tasks), err)
		}
	}
	carriesCalls(t, p)
	// The back instance's listener speaks TLS 1.3 and picks h2.
	addr := haproxyBind(t, filepath.Join(dir, "back.cfg"))
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatalf("TLS to the back instance at %s: %v", addr, err)
	}
	st := conn.ConnectionState()
	conn.Close()
	if st.Version != tls.VersionTLS13 || st.NegotiatedProtocol != "h2" {
		t.Errorf("back instance: got TLS version %#x and ALPN %q, want TLS 1.3 and h2", st.Version, st.NegotiatedProtocol)
	}
	if _, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12}); err == nil {
		t.Errorf("back instance accepted TLS 1.2, want TLS 1.3 only")
	}
}

// haproxyBind returns the address of the first bind line of an HAProxy configuration.
func haproxyBind(t *testing.T, conf string) string {
	t.Helper()
	b, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "bind" {
			return f[1]
		}
	}
	t.Fatalf("%s has no bind line", conf)
	return ""
}

func TestPercentile(t *testing.T) {
	lat := []time.Duration{5, 1, 4, 2, 3, 10, 9, 8, 7, 6}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{50, 5}, {99, 10}, {10, 1}, {1, 1}} {
		if got := percentile(lat, tc.p); got != tc.want {
			t.Errorf("percentile(%v): got %v, want %v", tc.p, got, tc.want)
		}
	}
	if got := percentile(nil, 50); got != 0 {
		t.Errorf("percentile of nothing: got %v, want 0", got)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"zero", Config{}, true},
		{"all named", Config{Paths: allPaths, Scenarios: []string{"stream-1KiB"}, Out: "x.json"}, true},
		{"unknown path", Config{Paths: []string{"envoy"}}, false},
		{"unknown scenario", Config{Scenarios: []string{"unary-1B"}}, false},
		{"negative duration", Config{Duration: -time.Second}, false},
		{"out not json", Config{Out: "x.txt"}, false},
		{"env", Config{VatcarEnv: []string{"GOGC=200"}}, true},
		{"env without =", Config{VatcarEnv: []string{"GOGC"}}, false},
		{"rounds", Config{Rounds: 3}, true},
		{"negative rounds", Config{Rounds: -1}, false},
		{"too many rounds", Config{Rounds: maxRounds + 1}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if (err == nil) != tc.ok {
				t.Errorf("Validate: got %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestProcReadsAChild(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Skipf("no sleep binary: %v", err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	ppid, _, err := procStat(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if ppid != os.Getpid() {
		t.Errorf("ppid: got %d, want %d", ppid, os.Getpid())
	}
	if got := withChildren([]int{os.Getpid()}); !slices.Contains(got, cmd.Process.Pid) {
		t.Errorf("withChildren(self): got %v, want it to hold %d", got, cmd.Process.Pid)
	}
	if rss := rssOf([]int{os.Getpid()}); rss < 1<<20 {
		t.Errorf("own RSS: got %d bytes, want at least 1 MiB", rss)
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestMedianResult checks the per-column median of rounds, odd and even.
func TestMedianResult(t *testing.T) {
	r := func(calls, cpu float64) Result {
		return Result{Scenario: "s", Path: "p", CallsPerS: calls, ProxyCPUmsPerKcall: cpu, P50us: calls / 10}
	}
	got := medianResult([]Result{r(30, 1), r(10, 5), r(20, 3)})
	if got.CallsPerS != 20 || got.ProxyCPUmsPerKcall != 3 || got.P50us != 2 || got.Scenario != "s" || got.Path != "p" {
		t.Errorf("odd: got %+v, want the middle of each column", got)
	}
	got = medianResult([]Result{r(40, 1), r(10, 4), r(20, 2), r(30, 3)})
	if got.CallsPerS != 25 || got.ProxyCPUmsPerKcall != 2.5 {
		t.Errorf("even: got %+v, want the mean of the middle two", got)
	}
}

// TestRoundsReportOneRowEach runs two rounds on the direct path: one row per
// scenario, and the Markdown says how many rounds its medians are over.
func TestRoundsReportOneRowEach(t *testing.T) {
	out := filepath.Join(t.TempDir(), "r.json")
	var stdout, stderr bytes.Buffer
	args := []string{"--paths", "direct", "--scenarios", "unary-100B-c1,pingpong-c1", "--rounds", "2",
		"--warmup", "1ms", "--duration", "200ms", "--out", out}
	if err := run(context.Background(), args, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\nstderr:\n%s", err, stderr.String())
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var rep Report
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) != 2 || rep.Results[0].Scenario != "unary-100B-c1" || rep.Results[1].Scenario != "pingpong-c1" {
		t.Fatalf("got rows %+v, want one per scenario in order", rep.Results)
	}
	for _, r := range rep.Results {
		if r.CallsPerS <= 0 {
			t.Errorf("%s: %v calls/s", r.Scenario, r.CallsPerS)
		}
	}
	if !strings.Contains(stdout.String(), "2 rounds: every column is the median") {
		t.Errorf("Markdown does not say it reports medians of 2 rounds:\n%s", stdout.String())
	}
	if n := strings.Count(stderr.String(), "unary-100B-c1    direct"); n != 2 {
		t.Errorf("log shows %d runs of unary-100B-c1, want 2:\n%s", n, stderr.String())
	}
}

// TestMarkdownComparesWithBestPeer writes the report of made-up rows: each ratio to the
// best peer takes the better of nginx-tls and haproxy-tls column by column (the higher
// calls/s, the lower p50 and CPU), never the grpcgo-tls or grpcgo-h2c references, and
// the targets are checked against it.
func TestMarkdownComparesWithBestPeer(t *testing.T) {
	row := func(sc, p string, calls, p50, cpu float64) Result {
		return Result{Scenario: sc, Path: p, CallsPerS: calls, P50us: p50, ProxyCPUmsPerKcall: cpu, ProxyRSSMiB: 30}
	}
	rep := Report{Results: []Result{
		row("unary-100B-c1", pathNginx, 4000, 250, 140),
		row("unary-100B-c1", pathHAProxy, 5000, 200, 150),
		row("unary-100B-c1", pathVatcar, 4500, 170, 140),
		row("unary-100B-c16", pathNginx, 12000, 1200, 70),
		row("unary-100B-c16", pathHAProxy, 10000, 1500, 30),
		row("unary-100B-c16", pathVatcar, 16000, 1000, 60),
		// The grpc-go reference beats both peers in every column: it is compared
		// with (calls/s vs grpcgo-tls) but never the best peer.
		row("unary-100B-c16", pathGrpcgo, 20000, 800, 20),
		// So does the one-proxy reference, and it is not the best peer either.
		row("unary-100B-c16", pathGrpcgoH2C, 30000, 500, 10),
		// Only one peer measured: it is the best.
		row("pingpong-c1", pathNginx, 6000, 150, 90),
		row("pingpong-c1", pathVatcar, 6000, 150, 80),
	}}
	info := runInfo{Instances: map[string][]instanceRSS{pathVatcar: {
		{Scenario: scenarioIdle, Name: "vatcar import", MiB: 17.5},
		{Scenario: scenarioOpenStreams(10000), Name: "vatcar export", MiB: 600},
	}}}
	var b bytes.Buffer
	writeMarkdown(&b, rep, info)
	md := b.String()
	for _, want := range []string{
		// calls/s vs nginx-tls, then vs the best peer (haproxy at c1), p50 vs the lower
		// (haproxy's 200), CPU vs the lower (nginx's 140).
		"| unary-100B-c1 | vatcar | 4500 | 170 | — | — | 140 | 30.0 | — | 1.12x | — | 0.90x haproxy-tls | 0.85x haproxy-tls | 1.00x nginx-tls |",
		"| unary-100B-c16 | vatcar | 16000 | 1000 | — | — | 60.0 | 30.0 | — | 1.33x | 0.80x | 1.33x nginx-tls | 0.83x nginx-tls | 2.00x haproxy-tls |",
		"| unary-100B-c16 | haproxy-tls | 10000 | 1500 | — | — | 30.0 | 30.0 | — | 0.83x | 0.50x | 0.83x nginx-tls | 1.25x nginx-tls | 1.00x haproxy-tls |",
		"| pingpong-c1 | vatcar | 6000 | 150 | — | — | 80.0 | 30.0 | — | 1.00x | — | 1.00x nginx-tls | 1.00x nginx-tls | 0.89x nginx-tls |",
		"- pass: unary-100B-c16 calls/s >= 1.3x the best peer's: 1.33x nginx-tls (16000 vs 12000)",
		"- pass: unary-100B-c1 p50 <= 0.9x the best peer's: 0.85x haproxy-tls (170 vs 200)",
		"- pass: pingpong-c1 calls/s >= 1.0x the best peer's: 1.00x nginx-tls",
		"- pass: unary-100B-c1 proxy CPU per call <= 1.0x the best peer's: 1.00x nginx-tls",
		"- FAIL: unary-100B-c16 proxy CPU per call <= 1.0x the best peer's: 2.00x haproxy-tls (60.0 vs 30.0)",
		"- pass: idle vatcar import <= 20 MiB RSS: 17.5 MiB",
		"- FAIL: open-streams-10000, vatcar export <= 512 MiB RSS: 600.0 MiB",
		"| unary-100B-c16 | grpcgo-tls | 20000 | 800 | — | — | 20.0 | 30.0 | — | 1.67x | 1.00x | 1.67x nginx-tls | 0.67x nginx-tls | 0.67x haproxy-tls |",
		"grpcgo-tls is a reference pair, not a peer",
		"| unary-100B-c16 | grpcgo-h2c | 30000 | 500 | — | — | 10.0 | 30.0 | — | 2.50x | 1.50x | 2.50x nginx-tls | 0.42x nginx-tls | 0.33x haproxy-tls |",
		"grpcgo-h2c is a reference, not a peer",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("Markdown lacks %q:\n%s", want, md)
		}
	}
	// The targets concern vatcar only, against nginx-tls and haproxy-tls.
	_, targets, _ := strings.Cut(md, "Issue 16's targets")
	if targets == "" || strings.Contains(targets, "grpcgo") {
		t.Errorf("targets missing or naming grpcgo-tls or grpcgo-h2c:\n%s", md)
	}
	// A scenario vatcar did not run is not checked.
	if strings.Contains(md, "unary-100B-c64 calls/s") {
		t.Errorf("Markdown checks a scenario without rows:\n%s", md)
	}
}

// TestStalledCallsEndTheScenario runs a scenario against a server that never answers:
// the harness cancels the calls stallGrace after the window and reports them, instead
// of waiting for good.
func TestStalledCallsEndTheScenario(t *testing.T) {
	defer func(g time.Duration) { stallGrace = g }(stallGrace)
	stallGrace = 200 * time.Millisecond
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.ForceServerCodecV2(rawCodec{}),
		grpc.UnknownServiceHandler(func(_ any, s grpc.ServerStream) error {
			<-s.Context().Done()
			return s.Context().Err()
		}))
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()
	cc, err := dial(lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	for _, sc := range []scenario{allScenarios[1], {"stream", stream, 10, 1}, {"pingpong", pingpong, 10, 1}} {
		done := make(chan measurement, 1)
		go func() {
			done <- runScenario(context.Background(), cc, sc, time.Millisecond, 100*time.Millisecond, nil, nil, nil)
		}()
		select {
		case m := <-done:
			if !errors.Is(m.lastEr, errStalled) || m.errs == 0 {
				t.Errorf("%s: got %d errors, last %v; want the stall reported", sc.Name, m.errs, m.lastEr)
			}
		case <-time.After(time.Minute):
			t.Fatalf("%s: runScenario still waits a minute after a %v grace", sc.Name, stallGrace)
		}
	}
}

// Methods of the probe backend (probeBackend) on top of the bench's.
const (
	methodProbeStatus = "/bench.Probe/Status" // headers, trailers and a non-OK status from the request's metadata
	methodProbeWait   = "/bench.Probe/Wait"   // reports its deadline, waits for the call to end, reports why
	// methodProbeHeaderFirst sends its headers, then waits for one message, echoes it
	// and ends.
	methodProbeHeaderFirst = "/bench.Probe/HeaderFirst"
)

// probeBackend serves the bench methods and the probe methods: Status answers the
// request metadata's x-probe value in a header and a trailer with FailedPrecondition
// and a detail, and sends every request metadata key it got on mds; Wait sends its
// context's deadline on deadlines, waits until the call ends and sends why on ended.
type probeBackend struct {
	srv       *grpc.Server
	lis       net.Listener
	mds       chan metadata.MD
	deadlines chan time.Duration // left until the deadline, or 0 without one
	ended     chan error
}

func startProbeBackend(t *testing.T) *probeBackend {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &probeBackend{lis: lis, mds: make(chan metadata.MD, 1), deadlines: make(chan time.Duration, 1), ended: make(chan error, 1)}
	b.srv = grpc.NewServer(grpc.ForceServerCodecV2(rawCodec{}), grpc.MaxRecvMsgSize(maxMessage), grpc.MaxSendMsgSize(maxMessage),
		grpc.UnknownServiceHandler(func(srv any, ss grpc.ServerStream) error {
			ctx := ss.Context()
			switch method, _ := grpc.MethodFromServerStream(ss); method {
			case methodProbeStatus:
				var req []byte
				if err := ss.RecvMsg(&req); err != nil {
					return err
				}
				md, _ := metadata.FromIncomingContext(ctx)
				b.mds <- md
				v := strings.Join(md.Get("x-probe"), ",")
				if err := ss.SetHeader(metadata.Pairs("x-head", "h-"+v)); err != nil {
					return err
				}
				ss.SetTrailer(metadata.Pairs("x-trail", "t-"+v, "x-trail-bin", string(req)))
				st, err := status.New(codes.FailedPrecondition, "probe says no to "+v).WithDetails(wrapperspb.String("detail-" + v))
				if err != nil {
					return err
				}
				return st.Err()
			case methodProbeHeaderFirst:
				if err := ss.SendHeader(metadata.Pairs("x-first", "before-any-message")); err != nil {
					return err
				}
				var m []byte
				if err := ss.RecvMsg(&m); err != nil {
					return err
				}
				return ss.SendMsg(&m)
			case methodProbeWait:
				var left time.Duration
				if d, ok := ctx.Deadline(); ok {
					left = time.Until(d)
				}
				b.deadlines <- left
				<-ctx.Done()
				b.ended <- ctx.Err()
				return ctx.Err()
			default:
				return serveBench(srv, ss)
			}
		}))
	go func() { _ = b.srv.Serve(lis) }()
	return b
}

// The grpc-go reference proxies (bench/grpcproxy) are checked on a probe backend, with
// the harness's descriptor set (so Unary and Stream take the single-request path,
// the probe methods the request goroutine): checkForwarding says what crosses them.

// TestGrpcgoPairCarriesCalls builds bench/grpcproxy, brings up the grpcgo-tls path
// with pprof on a probe backend, checks what crosses it (checkForwarding), the
// harness's scenarios with their proxy costs, each proxy's /metrics and
// /debug/pprof, and TLS 1.3 with ALPN h2 between the two proxies.
func TestGrpcgoPairCarriesCalls(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	bin, protoset := buildGrpcproxyForTest(t, dir)
	be := startProbeBackend(t)
	defer be.srv.Stop()
	p, err := startGrpcgo(ctx, bin, dir, be.lis.Addr().String(), grpcgoOptions{Protoset: protoset, Pprof: true})
	if err != nil {
		t.Fatalf("startGrpcgo: %v", err)
	}
	defer p.Close()
	if p.Name() != "grpcgo-tls" || slices.Contains(peerPaths, p.Name()) {
		t.Errorf("name %q, peers %v: want grpcgo-tls, not a peer", p.Name(), peerPaths)
	}
	if ins := p.Instances(); len(ins) != 2 || len(pids(p)) != 2 {
		t.Fatalf("instances %+v: want two, one process each", ins)
	}
	checkForwarding(t, p, be)
	carriesCalls(t, p)
	checkAdmin(t, p, dir)

	// The hop between the proxies is TLS 1.3 with ALPN h2.
	conn, err := tls.Dial("tcp", p.hop, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatalf("TLS to the back proxy at %s: %v", p.hop, err)
	}
	tst := conn.ConnectionState()
	conn.Close()
	if tst.Version != tls.VersionTLS13 || tst.NegotiatedProtocol != "h2" {
		t.Errorf("back proxy: got TLS version %#x and ALPN %q, want TLS 1.3 and h2", tst.Version, tst.NegotiatedProtocol)
	}
	if c, err := tls.Dial("tcp", p.hop, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12}); err == nil {
		c.Close()
		t.Errorf("back proxy accepted TLS 1.2, want TLS 1.3 only")
	}
}

// TestGrpcgoH2CCarriesCalls brings up the grpcgo-h2c path (one proxy, h2c both
// sides) with pprof and GOGC=150 in its environment (--vatcar-env) on a probe
// backend, and checks what crosses it (checkForwarding), the harness's scenarios,
// its /metrics and /debug/pprof, and that the environment reached its runtime.
func TestGrpcgoH2CCarriesCalls(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	bin, protoset := buildGrpcproxyForTest(t, dir)
	be := startProbeBackend(t)
	defer be.srv.Stop()
	p, err := startGrpcgoH2C(ctx, bin, dir, be.lis.Addr().String(), grpcgoOptions{Protoset: protoset, Env: []string{"GOGC=150"}, Pprof: true})
	if err != nil {
		t.Fatalf("startGrpcgoH2C: %v", err)
	}
	defer p.Close()
	if p.Name() != "grpcgo-h2c" || slices.Contains(peerPaths, p.Name()) {
		t.Errorf("name %q, peers %v: want grpcgo-h2c, not a peer", p.Name(), peerPaths)
	}
	if ins := p.Instances(); len(ins) != 1 || len(pids(p)) != 1 {
		t.Fatalf("instances %+v: want one, one process", ins)
	}
	checkForwarding(t, p, be)
	carriesCalls(t, p)
	checkAdmin(t, p, dir)
	body, err := fetchBody(ctx, "http://"+p.Instances()[0].Metrics+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(body, "\ngo_gc_gogc_percent 150\n") {
		t.Errorf("the proxy's GOGC is not the environment's 150: /metrics has %q", grepLines(body, "go_gc_gogc_percent"))
	}
}

// buildGrpcproxyForTest builds bench/grpcproxy and writes the harness's descriptor set
// into dir.
func buildGrpcproxyForTest(t *testing.T, dir string) (bin, protoset string) {
	t.Helper()
	bin, err := buildGrpcproxy(context.Background(), dir)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	protoset = filepath.Join(dir, "bench.protoset")
	if err := writeProtoset(protoset); err != nil {
		t.Fatal(err)
	}
	return bin, protoset
}

// checkForwarding checks what crosses the path p to the probe backend be: unary calls
// (one above gRPC's default 4 MiB limit), a server stream and a bidi stream with their
// contents, request metadata and the client's content-type (+json, then +proto),
// response headers, trailers and a non-OK status with its detail, the deadline, a
// client's cancellation, and response headers sent before any message.
func checkForwarding(t *testing.T, p path, be *probeBackend) {
	t.Helper()
	ctx := context.Background()
	cc, err := dial(p.Target())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	callCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()

	// Unary, 5 MiB: the proxies' 8 MiB limit, not gRPC's default 4 MiB.
	req := make([]byte, 5<<20)
	for i := range req {
		req[i] = byte(i * 7)
	}
	var resp []byte
	if err := cc.Invoke(callCtx, methodUnary, &req, &resp); err != nil || !bytes.Equal(resp, req) {
		t.Fatalf("unary 5 MiB: got %d bytes, err %v; want the request echoed", len(resp), err)
	}

	// Server streaming: 5 messages of 1000 bytes, then the end.
	s, err := cc.NewStream(callCtx, &grpc.StreamDesc{ServerStreams: true}, methodStream)
	if err != nil {
		t.Fatal(err)
	}
	sreq := streamRequest(1000, 5)
	if err := s.SendMsg(&sreq); err != nil {
		t.Fatal(err)
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		var m []byte
		err := s.RecvMsg(&m)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("stream message %d: %v", n, err)
		}
		if len(m) != 1000 {
			t.Fatalf("stream message %d: %d bytes, want 1000", n, len(m))
		}
		n++
	}
	if n != 5 {
		t.Fatalf("stream: got %d messages, want 5", n)
	}

	// Bidi: each message comes back as sent, in turn.
	b, err := cc.NewStream(callCtx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, methodPingPong)
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range []string{"ping", "", strings.Repeat("pong", 10000)} {
		out := []byte(m)
		var in []byte
		if err := b.SendMsg(&out); err != nil {
			t.Fatalf("pingpong %d: send: %v", i, err)
		}
		if err := b.RecvMsg(&in); err != nil || string(in) != m {
			t.Fatalf("pingpong %d: got %d bytes, err %v; want %d bytes back", i, len(in), err, len(m))
		}
	}
	if err := b.CloseSend(); err != nil {
		t.Fatal(err)
	}
	var extra []byte
	if err := b.RecvMsg(&extra); !errors.Is(err, io.EOF) {
		t.Fatalf("pingpong end: got %v, want io.EOF", err)
	}

	// Metadata both ways and a non-OK status with its detail.
	mdCtx := metadata.AppendToOutgoingContext(callCtx, "x-probe", "42", "x-probe-bin", "\x00\xff")
	var hdr, trl metadata.MD
	preq := []byte("\x01\x02trailer")
	err = cc.Invoke(mdCtx, methodProbeStatus, &preq, &resp, grpc.Header(&hdr), grpc.Trailer(&trl), grpc.CallContentSubtype("json"))
	st := status.Convert(err)
	if st.Code() != codes.FailedPrecondition || st.Message() != "probe says no to 42" {
		t.Errorf("status: got %v, want FailedPrecondition: probe says no to 42", err)
	}
	if d := st.Details(); len(d) != 1 || d[0].(*wrapperspb.StringValue).GetValue() != "detail-42" {
		t.Errorf("status details: got %v, want one StringValue detail-42", d)
	}
	if got := hdr.Get("x-head"); !slices.Equal(got, []string{"h-42"}) {
		t.Errorf("header x-head: got %q, want [h-42] (all: %v)", got, hdr)
	}
	if got, gotBin := trl.Get("x-trail"), trl.Get("x-trail-bin"); !slices.Equal(got, []string{"t-42"}) || !slices.Equal(gotBin, []string{string(preq)}) {
		t.Errorf("trailers: got x-trail %q x-trail-bin %q, want [t-42] and the request (all: %v)", got, gotBin, trl)
	}
	md := recvWithin(t, be.mds, "the backend's request metadata")
	if got := md.Get("content-type"); !slices.Equal(got, []string{"application/grpc+json"}) {
		t.Errorf("backend's content-type: got %q, want the client's application/grpc+json", got)
	}
	if got := md.Get("x-probe-bin"); !slices.Equal(got, []string{"\x00\xff"}) {
		t.Errorf("backend's x-probe-bin: got %q, want one value \\x00\\xff", got)
	}
	for _, k := range []string{"content-type", "user-agent", "grpc-accept-encoding"} {
		if len(md.Get(k)) > 1 {
			t.Errorf("backend got %s %q: the proxy forwarded a header gRPC sets itself", k, md.Get(k))
		}
	}

	// The deadline goes forward, and so does a client's cancellation.
	wctx, wcancel := context.WithTimeout(ctx, 40*time.Second)
	done := make(chan error, 1)
	go func() {
		var wreq, wresp []byte
		done <- cc.Invoke(wctx, methodProbeWait, &wreq, &wresp)
	}()
	if left := recvWithin(t, be.deadlines, "the backend's deadline"); left <= 0 || left > 40*time.Second {
		t.Errorf("backend's deadline: %v left, want some of the client's 40s", left)
	}
	wcancel()
	if err := recvWithin(t, done, "the cancelled call's end"); status.Code(err) != codes.Canceled {
		t.Errorf("cancelled call: got %v, want Canceled", err)
	}
	select {
	case err := <-be.ended:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("backend's call ended with %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the backend's call still runs 30s after the client cancelled it")
	}

	// The subtype of each call goes forward, not the first one's: a +proto call
	// after the +json one.
	if err := cc.Invoke(mdCtx, methodProbeStatus, &preq, &resp); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("status (+proto): got %v, want FailedPrecondition", err)
	}
	md = recvWithin(t, be.mds, "the backend's request metadata")
	if got := md.Get("content-type"); !slices.Equal(got, []string{"application/grpc+proto"}) {
		t.Errorf("backend's content-type: got %q, want the client's application/grpc+proto", got)
	}

	// Response headers come back before any response message: the backend sends
	// them, then waits for the client's message.
	hf, err := cc.NewStream(callCtx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, methodProbeHeaderFirst)
	if err != nil {
		t.Fatal(err)
	}
	headers := make(chan metadata.MD, 1)
	go func() {
		h, _ := hf.Header()
		headers <- h
	}()
	if got := recvWithin(t, headers, "the header-first call's headers").Get("x-first"); !slices.Equal(got, []string{"before-any-message"}) {
		t.Errorf("header-first: got x-first %q, want [before-any-message]", got)
	}
	hreq, hresp := []byte("now"), []byte(nil)
	if err := hf.SendMsg(&hreq); err != nil {
		t.Fatal(err)
	}
	if err := hf.RecvMsg(&hresp); err != nil || string(hresp) != "now" {
		t.Fatalf("header-first: got %q, %v; want the message back", hresp, err)
	}
	if err := hf.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if err := hf.RecvMsg(&hresp); !errors.Is(err, io.EOF) {
		t.Fatalf("header-first end: got %v, want io.EOF", err)
	}
}

// checkAdmin checks each instance's /metrics and /debug/pprof.
func checkAdmin(t *testing.T, p path, dir string) {
	t.Helper()
	ctx := context.Background()
	for _, in := range p.Instances() {
		rt, err := scrapeGo(ctx, in.Metrics)
		if err != nil || rt.Mallocs <= 0 || rt.Goroutines <= 0 {
			t.Errorf("%s /metrics: got %+v, %v; want allocations and goroutines", in.Name, rt, err)
		}
		if err := fetchTo(ctx, "http://"+in.Pprof+"/debug/pprof/goroutine", filepath.Join(dir, in.Name+".pprof")); err != nil {
			t.Errorf("%s /debug/pprof: %v", in.Name, err)
		}
	}
}

// recvWithin receives from ch, failing the test if nothing comes within 30 s (a hung
// proxy would otherwise hold the test until go test's timeout, which skips the
// deferred cleanups).
func recvWithin[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: nothing within 30s", what)
		panic("unreachable")
	}
}

// fetchBody GETs url and returns its body.
func fetchBody(ctx context.Context, url string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), err
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) []string {
	var out []string
	for l := range strings.SplitSeq(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return out
}
