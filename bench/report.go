package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
	"time"
)

// Result is one row of the JSON output: a scenario on a path.
type Result struct {
	Scenario string `json:"scenario"`
	Path     string `json:"path"`
	// CallsPerS counts calls (unary), messages (stream) or round trips (pingpong) per
	// second.
	CallsPerS float64 `json:"calls_per_s"`
	// P50us and P99us are the latency percentiles in microseconds; 0 for stream and
	// for the memory rows.
	P50us float64 `json:"p50_us"`
	P99us float64 `json:"p99_us"`
	// MBPerS is the payload the client received per second, in 10^6 bytes.
	MBPerS float64 `json:"mb_per_s"`
	// ProxyCPUmsPerKcall is the CPU time of all proxy processes of the path (both
	// instances, nginx workers and masters) per 1,000 calls; 0 for direct.
	ProxyCPUmsPerKcall float64 `json:"proxy_cpu_ms_per_kcall"`
	// ProxyRSSMiB is the resident memory of all proxy processes of the path at the end
	// of the window; 0 for direct.
	ProxyRSSMiB float64 `json:"proxy_rss_mib"`
	// HarnessCPUmsPerKcall is the CPU time of the harness's own process (the load
	// generator and the backend) per 1,000 calls, over the same span as the proxies'
	// CPU, on every path: what the two ends of a call cost on the machine the proxies
	// share.
	HarnessCPUmsPerKcall float64 `json:"harness_cpu_ms_per_kcall"`
}

// medianResult is rs's scenario and path with each column's median over rs
// (for an even count, the mean of the middle two).
func medianResult(rs []Result) Result {
	col := func(f func(Result) float64) float64 { return median(rs, f) }
	return Result{
		Scenario:             rs[0].Scenario,
		Path:                 rs[0].Path,
		CallsPerS:            col(func(r Result) float64 { return r.CallsPerS }),
		P50us:                col(func(r Result) float64 { return r.P50us }),
		P99us:                col(func(r Result) float64 { return r.P99us }),
		MBPerS:               col(func(r Result) float64 { return r.MBPerS }),
		ProxyCPUmsPerKcall:   col(func(r Result) float64 { return r.ProxyCPUmsPerKcall }),
		ProxyRSSMiB:          col(func(r Result) float64 { return r.ProxyRSSMiB }),
		HarnessCPUmsPerKcall: col(func(r Result) float64 { return r.HarnessCPUmsPerKcall }),
	}
}

// median is the median of f over rs (for an even count, the mean of the
// middle two); rs is not empty.
func median[T any](rs []T, f func(T) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	slices.Sort(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

// Report is the JSON output.
type Report struct {
	Results []Result `json:"results"`
}

// The memory rows' scenario names.
const (
	scenarioIdle = "idle"
)

func scenarioOpenStreams(n int) string { return fmt.Sprintf("open-streams-%d", n) }

// runInfo is what the Markdown report says beside the table.
type runInfo struct {
	Started   time.Time
	Quick     bool
	Rounds    int
	Warmup    time.Duration
	Duration  time.Duration
	Nginx     string
	HAProxy   string
	Skipped   map[string]string // path -> reason
	Errors    map[string]string // "scenario/path" -> count and last error
	Instances map[string][]instanceRSS
	// Runtime is the Go proxies' allocations per call and goroutines, per
	// scenario (medians over the rounds); IdleGoroutines their goroutines
	// before any load.
	Runtime        []instanceRuntime
	IdleGoroutines []instanceRuntime
	Notes          []string
}

// instanceRSS is one proxy instance's memory in a memory row.
type instanceRSS struct {
	Scenario string
	Name     string
	MiB      float64
}

// toResult turns a measurement into a row.
func toResult(sc scenario, pathName string, m measurement, proxied bool) Result {
	r := Result{Scenario: sc.Name, Path: pathName}
	if m.seconds > 0 {
		r.CallsPerS = round(float64(m.ops)/m.seconds, 1)
		r.MBPerS = round(float64(m.bytes)/1e6/m.seconds, 2)
	}
	if sc.Kind != stream {
		r.P50us = round(float64(percentile(m.lat, 50))/1e3, 1)
		r.P99us = round(float64(percentile(m.lat, 99))/1e3, 1)
	}
	if m.ops > 0 {
		r.HarnessCPUmsPerKcall = round(float64(m.harness)/1e6/float64(m.ops)*1000, 2)
	}
	if proxied {
		if m.ops > 0 {
			r.ProxyCPUmsPerKcall = round(float64(m.cpu)/1e6/float64(m.ops)*1000, 2)
		}
		r.ProxyRSSMiB = round(mib(m.rss), 1)
	}
	return r
}

func round(x float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(x*p) / p
}

// writeJSON writes the report to path.
func writeJSON(path string, rep Report) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	return nil
}

// markdownPath is the Markdown report beside the JSON file.
func markdownPath(jsonPath string) string {
	return strings.TrimSuffix(jsonPath, ".json") + ".md"
}

// find returns the row of scenario on path.
func find(rs []Result, scenario, pathName string) (Result, bool) {
	for _, r := range rs {
		if r.Scenario == scenario && r.Path == pathName {
			return r, true
		}
	}
	return Result{}, false
}

// ratio formats a/b, or "—" when either is missing.
func ratio(a, b float64) string {
	if a == 0 || b == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

func num(x float64) string {
	if x == 0 {
		return "—"
	}
	if x >= 100 {
		return fmt.Sprintf("%.0f", x)
	}
	return fmt.Sprintf("%.1f", x)
}

// writeMarkdown writes the table, its ratios, the targets and the notes.
func writeMarkdown(w io.Writer, rep Report, info runInfo) {
	fmt.Fprintf(w, "# vatcar bench, %s\n\n", info.Started.UTC().Format("2006-01-02 15:04 UTC"))
	mode := "full"
	if info.Quick {
		mode = "quick"
	}
	rounds := ""
	if info.Rounds > 1 {
		rounds = fmt.Sprintf(" %d rounds: every column is the median over them.", info.Rounds)
	}
	fmt.Fprintf(w, "Mode %s: per scenario and path, %v of load counted after %v of warm-up; "+
		"the paths take turns scenario by scenario in one run.%s %d CPUs, %s, %s, %s.\n\n",
		mode, info.Duration, info.Warmup, rounds, numCPU(), goVersion(), info.Nginx, info.HAProxy)
	fmt.Fprintln(w, "Ratios compare paths measured in this run only; on a shared machine the absolute numbers drift between runs.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| scenario | path | calls/s | p50 µs | p99 µs | MB/s | proxy CPU ms/1k calls | proxy RSS MiB | calls/s vs direct | calls/s vs nginx-tls | calls/s vs grpcgo-tls | calls/s vs best peer | p50 vs best peer | CPU vs best peer |")
	fmt.Fprintln(w, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
	for _, r := range rep.Results {
		d, _ := find(rep.Results, r.Scenario, pathDirect)
		n, _ := find(rep.Results, r.Scenario, pathNginx)
		g, _ := find(rep.Results, r.Scenario, pathGrpcgo)
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			r.Scenario, r.Path, num(r.CallsPerS), num(r.P50us), num(r.P99us), num(r.MBPerS),
			num(r.ProxyCPUmsPerKcall), num(r.ProxyRSSMiB),
			ratio(r.CallsPerS, d.CallsPerS), ratio(r.CallsPerS, n.CallsPerS), ratio(r.CallsPerS, g.CallsPerS),
			peerRatio(rep.Results, r, colCalls), peerRatio(rep.Results, r, colP50), peerRatio(rep.Results, r, colCPU))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "The best peer is, column by column, the better of nginx-tls and haproxy-tls in this run: "+
		"the higher calls/s, the lower p50, the lower proxy CPU per call; the cell names which one it was.")
	if slices.ContainsFunc(rep.Results, func(r Result) bool { return r.Path == pathGrpcgo }) {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "grpcgo-tls is a reference pair, not a peer: two plain grpc-go proxies (bench/grpcproxy) joined by gRPC over TLS 1.3, "+
			"with vatcar's grpc-go settings, sockets and runtime defaults and no Cap'n Proto. It runs two grpc-go servers and two clients "+
			"where vatcar's pair runs one of each plus a Cap'n Proto hop: an alternative design, not a lower bound under vatcar's figures. "+
			"It is never the best peer and the targets ignore it.")
	}
	if slices.ContainsFunc(rep.Results, func(r Result) bool { return r.Path == pathGrpcgoH2C }) {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "grpcgo-h2c is a reference, not a peer: one bench/grpcproxy, h2c both sides, "+
			"one grpc-go server and one grpc-go client with vatcar's settings: the grpc-go share of vatcar's pair, measured in the same run. "+
			"It is never the best peer and the targets ignore it.")
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "calls/s counts calls (unary), messages (stream) or round trips (pingpong); MB/s is payload received by the client (10^6 bytes/s); "+
		"proxy CPU and RSS add up both proxies of a pair (nginx masters and workers included; each HAProxy is one process), from /proc.")
	if len(info.Instances) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Memory per proxy instance:")
		fmt.Fprintln(w)
		for _, p := range allPaths {
			for _, in := range info.Instances[p] {
				fmt.Fprintf(w, "- %s, %s: %.1f MiB\n", in.Scenario, in.Name, in.MiB)
			}
		}
	}
	writeHarness(w, rep)
	writeRuntime(w, info)
	writeTargets(w, rep, info)
	if len(info.Skipped) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Skipped paths:")
		fmt.Fprintln(w)
		for _, p := range allPaths {
			if reason, ok := info.Skipped[p]; ok {
				fmt.Fprintf(w, "- %s: %s\n", p, reason)
			}
		}
	}
	if len(info.Errors) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Failed calls (not counted in the rows):")
		fmt.Fprintln(w)
		for k, v := range info.Errors {
			fmt.Fprintf(w, "- %s: %s\n", k, v)
		}
	}
	for _, n := range info.Notes {
		fmt.Fprintf(w, "\n%s\n", n)
	}
}

// column is one measured column of a row, and which way is better.
type column struct {
	name   string
	val    func(Result) float64
	higher bool // a higher value is better
}

var (
	colCalls = column{"calls/s", func(r Result) float64 { return r.CallsPerS }, true}
	colP50   = column{"p50", func(r Result) float64 { return r.P50us }, false}
	colCPU   = column{"proxy CPU per call", func(r Result) float64 { return r.ProxyCPUmsPerKcall }, false}
)

// bestPeer returns the row of scenario on the peer path (nginx-tls, haproxy-tls) that
// is better in col, among the peers measured with a value in it.
func bestPeer(rs []Result, scenario string, col column) (Result, bool) {
	var best Result
	found := false
	for _, p := range peerPaths {
		r, ok := find(rs, scenario, p)
		if !ok || col.val(r) == 0 {
			continue
		}
		if !found || (col.higher && col.val(r) > col.val(best)) || (!col.higher && col.val(r) < col.val(best)) {
			best, found = r, true
		}
	}
	return best, found
}

// peerRatio formats r's col against the best peer's, naming the peer: "1.30x nginx-tls",
// or "—" when either is missing.
func peerRatio(rs []Result, r Result, col column) string {
	b, ok := bestPeer(rs, r.Scenario, col)
	if !ok || col.val(r) == 0 {
		return "—"
	}
	return ratio(col.val(r), col.val(b)) + " " + b.Path
}

// writeTargets checks issue 16's targets for the vatcar path against the better peer
// of this run.
func writeTargets(w io.Writer, rep Report, info runInfo) {
	rs := rep.Results
	var lines []string
	check := func(ok bool, format string, args ...any) {
		mark := "FAIL"
		if ok {
			mark = "pass"
		}
		lines = append(lines, fmt.Sprintf("- %s: %s", mark, fmt.Sprintf(format, args...)))
	}
	// atLeast checks vatcar's col in scenario against factor times the best peer's:
	// at least that for a higher-is-better column, at most for the others.
	atLeast := func(scenario string, col column, factor float64) {
		v, ok1 := find(rs, scenario, pathVatcar)
		b, ok2 := bestPeer(rs, scenario, col)
		if !ok1 || !ok2 || col.val(v) == 0 {
			return
		}
		r := col.val(v) / col.val(b)
		if col.higher {
			check(r >= factor, "%s %s >= %.1fx the best peer's: %.2fx %s (%s vs %s)",
				scenario, col.name, factor, r, b.Path, num(col.val(v)), num(col.val(b)))
		} else {
			check(r <= factor, "%s %s <= %.1fx the best peer's: %.2fx %s (%s vs %s)",
				scenario, col.name, factor, r, b.Path, num(col.val(v)), num(col.val(b)))
		}
	}
	atLeast("unary-100B-c16", colCalls, 1.3)
	atLeast("unary-100B-c64", colCalls, 1.3)
	atLeast("unary-100B-c1", colP50, 0.9)
	atLeast("pingpong-c1", colCalls, 1.0)
	atLeast("stream-1KiB", colCalls, 1.0)
	for _, sc := range allScenarios {
		atLeast(sc.Name, colCPU, 1.0)
	}
	for _, in := range info.Instances[pathVatcar] {
		switch {
		case in.Scenario == scenarioIdle:
			check(in.MiB <= 20, "idle %s <= 20 MiB RSS: %.1f MiB", in.Name, in.MiB)
		case strings.HasPrefix(in.Scenario, "open-streams-"):
			check(in.MiB <= 512, "%s, %s <= 512 MiB RSS: %.1f MiB", in.Scenario, in.Name, in.MiB)
		}
	}
	if len(lines) == 0 {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Issue 16's targets for the vatcar path against the best peer (the better of nginx-tls and haproxy-tls), in this run:")
	fmt.Fprintln(w)
	for _, l := range lines {
		fmt.Fprintln(w, l)
	}
}

// writeRuntime writes the Go proxies' allocations per call and goroutines,
// from their /metrics, if any were read.
func writeRuntime(w io.Writer, info runInfo) {
	if len(info.Runtime) == 0 {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Go runtime per instance (from its /metrics: heap objects allocated inside the window per call, message or round trip, "+
		"and goroutines at the window's end, while the load ran):")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| scenario | instance | allocations per call | goroutines |")
	fmt.Fprintln(w, "|---|---|--:|--:|")
	for _, r := range info.IdleGoroutines {
		fmt.Fprintf(w, "| %s | %s | — | %s |\n", r.Scenario, r.Name, num(r.Goroutines))
	}
	for _, r := range info.Runtime {
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", r.Scenario, r.Name, num(r.AllocsPerCall), num(r.Goroutines))
	}
}

// writeHarness lists the harness's own CPU per call on the direct path, where
// nothing else runs: what the load generator and the backend (one grpc-go client
// and one grpc-go server, in one process) cost per call.
func writeHarness(w io.Writer, rep Report) {
	var parts []string
	for _, r := range rep.Results {
		if r.Path == pathDirect && r.HarnessCPUmsPerKcall > 0 {
			parts = append(parts, fmt.Sprintf("%s %s", r.Scenario, num(r.HarnessCPUmsPerKcall)))
		}
	}
	if len(parts) == 0 {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "The harness's own CPU (its load generator and backend, one process) per 1,000 calls, "+
		"messages or round trips on the direct path: %s ms (the JSON has it for every path).\n", strings.Join(parts, ", "))
}
