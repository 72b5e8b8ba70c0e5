package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
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
	wantKeys := []string{"calls_per_s", "mb_per_s", "p50_us", "p99_us", "path", "proxy_cpu_ms_per_kcall", "proxy_rss_mib", "scenario"}
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
		// the report's rounding to 0.01 MB/s (which a slow machine's
		// 100-byte scenarios come near).
		if want := r.CallsPerS * float64(sc.Size) / 1e6; !near(r.MBPerS, want, 0.05) && math.Abs(r.MBPerS-want) > 0.005 {
			t.Errorf("%s: got %v MB/s, want about %v from %v calls/s of %d bytes", r.Scenario, r.MBPerS, want, r.CallsPerS, sc.Size)
		}
		if sc.Kind == stream {
			if r.P50us != 0 || r.P99us != 0 {
				t.Errorf("%s: got p50 %v p99 %v, want 0 for a stream", r.Scenario, r.P50us, r.P99us)
			}
		} else if r.P50us <= 0 || r.P99us < r.P50us {
			t.Errorf("%s: got p50 %v p99 %v, want 0 < p50 <= p99", r.Scenario, r.P50us, r.P99us)
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

// TestNginxPairCarriesCalls brings up the nginx-tls path when nginx is installed (the
// test never installs it) and runs one scenario through it, with its proxy costs.
func TestNginxPairCarriesCalls(t *testing.T) {
	bin, err := findNginx(context.Background(), "", false, t.Logf)
	if errors.Is(err, errSkipped) {
		t.Skipf("nginx-tls path: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
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
	cc, err := dial(p.Target())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	m := runScenario(context.Background(), cc, allScenarios[1], time.Millisecond, 300*time.Millisecond, pids(p), nil)
	if m.errs != 0 || m.ops == 0 {
		t.Fatalf("got %d calls and %d errors (last %v), want calls and no errors", m.ops, m.errs, m.lastEr)
	}
	if m.rss <= 0 {
		t.Errorf("proxy RSS: got %d, want > 0", m.rss)
	}
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

func near(got, want, tolerance float64) bool {
	if want == 0 {
		return got == 0
	}
	d := (got - want) / want
	return d < tolerance && d > -tolerance
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
