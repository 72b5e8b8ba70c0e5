package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"syscall"
	"time"

	"google.golang.org/grpc"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// run parses args, measures, writes the JSON and Markdown files, and prints the table
// to stdout; progress goes to stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	return measureAll(ctx, cfg.withDefaults(), stdout, stderr)
}

// measureAll is one run of the harness.
func measureAll(ctx context.Context, cfg Config, stdout, stderr io.Writer) error {
	logf := func(format string, args ...any) {
		fmt.Fprintf(stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}
	info := runInfo{
		Started: time.Now(), Quick: cfg.Quick, Rounds: cfg.Rounds, Warmup: cfg.Warmup, Duration: cfg.Duration,
		Nginx: "nginx not used", HAProxy: "HAProxy not used", Skipped: map[string]string{}, Errors: map[string]string{},
		Instances: map[string][]instanceRSS{},
	}
	dir, err := os.MkdirTemp("", "vatcar-bench-")
	if err != nil {
		return fmt.Errorf("temp dir: %w", err)
	}
	if cfg.Keep {
		logf("configs and logs in %s", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	be, err := startBackend()
	if err != nil {
		return err
	}
	defer be.Close()

	var paths []path
	defer func() {
		for _, p := range paths {
			p.Close()
		}
	}()
	for _, name := range cfg.Paths {
		logf("starting %s", name)
		p, err := startPath(ctx, cfg, name, filepath.Join(dir, name), be.Addr(), &info, logf)
		if err != nil {
			if name == pathDirect || ctx.Err() != nil {
				return err
			}
			info.Skipped[name] = err.Error()
			logf("skipping %s: %v", name, err)
			continue
		}
		paths = append(paths, p)
	}

	var rep Report
	for _, p := range paths {
		if len(p.Instances()) == 0 {
			continue
		}
		rep.Results = append(rep.Results, memoryRow(scenarioIdle, p, &info))
		for _, s := range sampleRuntime(ctx, p) {
			if s.ok {
				info.IdleGoroutines = append(info.IdleGoroutines, instanceRuntime{Scenario: scenarioIdle, Name: s.name, Goroutines: s.rt.Goroutines})
			}
		}
	}
	conns := make(map[string]*grpc.ClientConn, len(paths))
	defer func() {
		for _, cc := range conns {
			cc.Close()
		}
	}()
	for _, p := range paths {
		cc, err := dial(p.Target())
		if err != nil {
			return err
		}
		conns[p.Name()] = cc
	}
	var exited []string                              // paths already reported as dead
	rounds := make(map[string][]Result)              // scenario/path -> one result per round
	runtimes := make(map[string][][]instanceRuntime) // scenario/path -> one per round
	for round := range cfg.Rounds {
		for _, sc := range allScenarios {
			if !slices.Contains(cfg.Scenarios, sc.Name) {
				continue
			}
			for _, p := range paths {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				var hook func(time.Duration)
				var waitProfiles func()
				if cfg.PprofDir != "" && round == 0 && slices.Contains(profiledScenarios, sc.Name) {
					hook = func(d time.Duration) { waitProfiles = startProfiles(ctx, cfg.PprofDir, sc.Name, p, d, logf) }
				}
				m := runScenario(ctx, conns[p.Name()], sc, cfg.Warmup, cfg.Duration, pids(p), hook, func() []runtimeSample { return sampleRuntime(ctx, p) })
				if waitProfiles != nil {
					waitProfiles()
				}
				r := toResult(sc, p.Name(), m, len(p.Instances()) > 0)
				key := sc.Name + "/" + p.Name()
				rounds[key] = append(rounds[key], r)
				runtimes[key] = append(runtimes[key], runtimeRows(sc.Name, m.rt0, m.rt1, m.ops))
				if m.errs > 0 {
					info.Errors[sc.Name+"/"+p.Name()] = fmt.Sprintf("%d, last: %v", m.errs, m.lastEr)
				}
				if err := p.Exited(); err != nil && !slices.Contains(exited, p.Name()) {
					exited = append(exited, p.Name())
					info.Notes = append(info.Notes, fmt.Sprintf("%s: a proxy process died during %s: %v", p.Name(), sc.Name, err))
					logf("%s: %v", p.Name(), err)
				}
				logf("%-16s %-9s %9.0f calls/s  p50 %6.0f us  p99 %6.0f us  %7.1f MB/s  cpu %5.1f ms/kcall  rss %5.1f MiB  errors %d",
					sc.Name, p.Name(), r.CallsPerS, r.P50us, r.P99us, r.MBPerS, r.ProxyCPUmsPerKcall, r.ProxyRSSMiB, m.errs)
			}
		}
	}
	for _, sc := range allScenarios {
		for _, p := range paths {
			if rs := rounds[sc.Name+"/"+p.Name()]; len(rs) > 0 {
				rep.Results = append(rep.Results, medianResult(rs))
			}
			info.Runtime = append(info.Runtime, medianRuntime(runtimes[sc.Name+"/"+p.Name()])...)
		}
	}
	if cfg.OpenStreams > 0 {
		for _, p := range paths {
			if p.Name() != pathVatcar {
				continue
			}
			row, err := openStreamsRow(ctx, p, cfg.OpenStreams, cfg.PprofDir, &info, logf)
			if err != nil {
				info.Notes = append(info.Notes, fmt.Sprintf("%s with %d open streams: %v", p.Name(), cfg.OpenStreams, err))
				logf("open streams on %s: %v", p.Name(), err)
			}
			rep.Results = append(rep.Results, row)
		}
	}

	if err := writeJSON(cfg.Out, rep); err != nil {
		return err
	}
	var md bytes.Buffer
	writeMarkdown(&md, rep, info)
	if err := os.WriteFile(markdownPath(cfg.Out), md.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write Markdown: %w", err)
	}
	_, err = stdout.Write(md.Bytes())
	logf("wrote %s and %s", cfg.Out, markdownPath(cfg.Out))
	return err
}

// startPath brings up the named path with its own directory under the run's.
func startPath(ctx context.Context, cfg Config, name, dir, backendAddr string, info *runInfo, logf func(string, ...any)) (path, error) {
	if name == pathDirect {
		return direct{target: backendAddr}, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("path dir: %w", err)
	}
	switch name {
	case pathNginx:
		bin, err := findNginx(ctx, cfg.Nginx, !cfg.NoInstall, logf)
		if err != nil {
			return nil, err
		}
		info.Nginx = nginxVersion(bin)
		return startNginx(ctx, bin, dir, backendAddr)
	case pathHAProxy:
		bin, err := findHAProxy(ctx, cfg.HAProxy, !cfg.NoInstall, logf)
		if err != nil {
			return nil, err
		}
		info.HAProxy = haproxyVersion(bin)
		return startHAProxy(ctx, bin, dir, backendAddr)
	case pathGrpcgo, pathGrpcgoH2C:
		logf("building %s", pkgGrpcproxy)
		bin, err := buildGrpcproxy(ctx, dir)
		if err != nil {
			return nil, err
		}
		o := grpcgoOptions{Env: cfg.VatcarEnv, Pprof: cfg.PprofDir != ""}
		if !cfg.NoDescriptors {
			o.Protoset = filepath.Join(dir, "bench.protoset")
			if err := writeProtoset(o.Protoset); err != nil {
				return nil, err
			}
		}
		if name == pathGrpcgoH2C {
			return startGrpcgoH2C(ctx, bin, dir, backendAddr, o)
		}
		return startGrpcgo(ctx, bin, dir, backendAddr, o)
	case pathVatcar:
		bin := cfg.Vatcar
		if bin == "" {
			pkg := pkgVatcar
			if cfg.PprofDir != "" {
				pkg = pkgVatcarProf
			}
			logf("building %s", pkg)
			var err error
			if bin, err = buildVatcar(ctx, dir, pkg); err != nil {
				return nil, err
			}
		}
		args := cfg.VatcarArgs
		if !cfg.NoDescriptors {
			protoset := filepath.Join(dir, "bench.protoset")
			if err := writeProtoset(protoset); err != nil {
				return nil, err
			}
			args = append([]string{"--proto-descriptors", protoset}, args...)
		}
		return startVatcar(ctx, bin, dir, backendAddr, args, cfg.VatcarEnv, cfg.PprofDir != "")
	}
	return nil, fmt.Errorf("unknown path %q", name)
}

// memoryRow is a row holding only the path's resident memory now, recording each
// instance's share for the report.
func memoryRow(scenarioName string, p path, info *runInfo) Result {
	var total int64
	for _, in := range p.Instances() {
		rss := rssOf(in.PIDs)
		total += rss
		info.Instances[p.Name()] = append(info.Instances[p.Name()], instanceRSS{Scenario: scenarioName, Name: in.Name, MiB: round(mib(rss), 1)})
	}
	return Result{Scenario: scenarioName, Path: p.Name(), ProxyRSSMiB: round(mib(total), 1)}
}

// openStreamsRow holds n streams open through p and records the memory then, and
// with a pprof directory the heap and goroutine profiles.
func openStreamsRow(ctx context.Context, p path, n int, pprofDir string, info *runInfo, logf func(string, ...any)) (Result, error) {
	logf("opening %d streams through %s", n, p.Name())
	start := time.Now()
	h := newHeldStreams(ctx)
	defer h.Close()
	err := h.Open(p.Target(), n, 2*time.Minute)
	logf("%d streams open through %s in %v", h.opened, p.Name(), time.Since(start).Round(time.Millisecond))
	row := memoryRow(scenarioOpenStreams(n), p, info)
	if pprofDir != "" {
		snapshotProfiles(ctx, pprofDir, scenarioOpenStreams(n), p, logf)
	}
	return row, err
}

func numCPU() int { return runtime.NumCPU() }

func goVersion() string { return runtime.Version() }
