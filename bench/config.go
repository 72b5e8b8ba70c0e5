package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Config is one run of the harness. The zero value runs every path and scenario in
// full mode and writes bench-results.json.
type Config struct {
	// Out is the JSON file; the Markdown report goes beside it with the extension .md.
	// Empty: bench-results.json.
	Out string
	// Quick shortens warm-up and windows so the whole run stays under 5 minutes.
	Quick bool
	// Rounds is how many times each scenario runs on each path, the paths taking
	// turns; every column reported is the median over the rounds. Zero: 1.
	Rounds int
	// Paths to measure, from direct, nginx-tls, haproxy-tls, grpcgo-h2c, grpcgo-tls,
	// vatcar. Empty: all.
	Paths []string
	// Scenarios to run, by name. Empty: all.
	Scenarios []string
	// Warmup and Duration per scenario and path. Zero: 2 s and 10 s (quick: 0.5 s and 2 s).
	Warmup, Duration time.Duration
	// OpenStreams is how many streams the memory row holds open through the vatcar
	// path (no other path gets the row). Zero: 10,000; negative: no such row.
	OpenStreams int
	// Vatcar is a vatcar binary to use. Empty: ./cmd/vatcar of the module in
	// the working directory, built as the sidecar image's binary is (buildVatcar).
	Vatcar string
	// VatcarArgs are appended to both sidecars' command lines.
	VatcarArgs []string
	// NoDescriptors runs the sidecars without --proto-descriptors: every call
	// then takes the bridge's general path, as for a deployment that gives the
	// sidecars no descriptor sets. The grpc-go reference proxies then get none
	// either (each call has a request goroutine).
	NoDescriptors bool
	// VatcarEnv are KEY=VALUE variables added to both sidecars' environment (GOGC=200,
	// GOMAXPROCS=1, ...), to measure runtime settings; the grpc-go reference proxies
	// (grpcgo-h2c, grpcgo-tls) get them too.
	VatcarEnv []string
	// Nginx and HAProxy are the peer proxies' binaries. Empty: nginx or haproxy from
	// PATH or /usr/sbin, installed with apt-get when missing unless NoInstall.
	Nginx     string
	HAProxy   string
	NoInstall bool
	// PprofDir, when set, receives CPU, allocation, block and mutex profiles of each
	// vatcar sidecar and grpc-go reference proxy during the profiled scenarios. The sidecars
	// are then built from bench/vatcarprof (the same sidecar with net/http/pprof)
	// unless Vatcar is set.
	PprofDir string
	// Keep leaves the temporary directory (configs, logs, keys) in place.
	Keep bool
}

// maxRounds bounds Config.Rounds: a typo, not a measurement.
const maxRounds = 25

// profiledScenarios are the ones PprofDir profiles.
var profiledScenarios = []string{"unary-100B-c1", "unary-100B-c64", "stream-1KiB", "pingpong-c1"}

// withDefaults fills in the zero fields.
func (c Config) withDefaults() Config {
	if c.Out == "" {
		c.Out = "bench-results.json"
	}
	if len(c.Paths) == 0 {
		c.Paths = allPaths
	}
	if len(c.Scenarios) == 0 {
		for _, s := range allScenarios {
			c.Scenarios = append(c.Scenarios, s.Name)
		}
	}
	if c.Warmup == 0 {
		c.Warmup = 2 * time.Second
		if c.Quick {
			c.Warmup = 500 * time.Millisecond
		}
	}
	if c.Duration == 0 {
		c.Duration = 10 * time.Second
		if c.Quick {
			c.Duration = 2 * time.Second
		}
	}
	if c.OpenStreams == 0 {
		c.OpenStreams = 10000
	}
	if c.Rounds == 0 {
		c.Rounds = 1
	}
	return c
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	for _, p := range c.Paths {
		if !slices.Contains(allPaths, p) {
			return fmt.Errorf("unknown path %q (want one of %s)", p, strings.Join(allPaths, ", "))
		}
	}
	for _, s := range c.Scenarios {
		if !slices.ContainsFunc(allScenarios, func(sc scenario) bool { return sc.Name == s }) {
			return fmt.Errorf("unknown scenario %q", s)
		}
	}
	if c.Warmup < 0 || c.Duration < 0 {
		return errors.New("warm-up and duration must not be negative")
	}
	if c.Rounds < 0 || c.Rounds > maxRounds {
		return fmt.Errorf("--rounds %d: want 1 to %d", c.Rounds, maxRounds)
	}
	for _, kv := range c.VatcarEnv {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return fmt.Errorf("vatcar environment %q: want KEY=VALUE", kv)
		}
	}
	if c.Out != "" && !strings.HasSuffix(c.Out, ".json") {
		return fmt.Errorf("--out %q: want a .json file", c.Out)
	}
	return nil
}

// parseFlags parses the command line into a Config.
func parseFlags(args []string, stderr io.Writer) (Config, error) {
	var c Config
	var paths, scenarios, vatcarArgs, vatcarEnv string
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.Out, "out", "", "JSON results `file` (default bench-results.json); the Markdown table goes beside it")
	fs.BoolVar(&c.Quick, "quick", false, "short windows: the whole run stays under 5 minutes")
	fs.IntVar(&c.Rounds, "rounds", 0, "run every scenario `N` times per path, paths taking turns, and report medians (default 1)")
	fs.StringVar(&paths, "paths", "", "comma-separated paths (default direct,nginx-tls,haproxy-tls,grpcgo-h2c,grpcgo-tls,vatcar)")
	fs.StringVar(&scenarios, "scenarios", "", "comma-separated scenarios (default all)")
	fs.DurationVar(&c.Warmup, "warmup", 0, "warm-up per scenario and path (default 2s, quick 0.5s)")
	fs.DurationVar(&c.Duration, "duration", 0, "measured window per scenario and path (default 10s, quick 2s)")
	fs.IntVar(&c.OpenStreams, "open-streams", 0, "streams held open for the memory row (default 10000, negative: none)")
	fs.StringVar(&c.Vatcar, "vatcar", "", "vatcar `binary` (default: ./cmd/vatcar built as the sidecar image's binary, tools/build.sh --sidecar)")
	fs.StringVar(&vatcarArgs, "vatcar-args", "", "extra space-separated flags for both sidecars")
	fs.BoolVar(&c.NoDescriptors, "no-descriptors", false, "run the sidecars without --proto-descriptors (every call on the general path)")
	fs.StringVar(&vatcarEnv, "vatcar-env", "", "extra space-separated KEY=VALUE environment for both sidecars (and the grpc-go reference proxies)")
	fs.StringVar(&c.Nginx, "nginx", "", "nginx `binary` (default: from PATH, apt-get installed if missing)")
	fs.StringVar(&c.HAProxy, "haproxy", "", "haproxy `binary` (default: from PATH, apt-get installed if missing)")
	fs.BoolVar(&c.NoInstall, "no-install", false, "never apt-get install nginx or haproxy")
	fs.StringVar(&c.PprofDir, "pprof-dir", "", "write CPU and allocation profiles of the sidecars and grpc-go proxies here")
	fs.BoolVar(&c.Keep, "keep", false, "keep the temporary directory with configs and logs")
	if err := fs.Parse(args); err != nil {
		return Config{}, fmt.Errorf("%w: %w", errUsage, err)
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	c.Paths = splitList(paths)
	c.Scenarios = splitList(scenarios)
	c.VatcarArgs = strings.Fields(vatcarArgs)
	c.VatcarEnv = strings.Fields(vatcarEnv)
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("%w: %w", errUsage, err)
	}
	return c, nil
}

func splitList(s string) []string {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
