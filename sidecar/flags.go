package sidecar

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// ParseFlags parses the arguments of `vatcar run` into a Config: it loads the
// YAML file named by --config (unknown or duplicate fields are errors), then
// applies the flags given, which override it. Repeatable flags (--export,
// --import, --route) add to the file's list; an entry whose NAME (SERVICE for
// routes) the file already has replaces it. The result is validated. Errors
// wrap ErrConfig and name the offending value; flag usage goes to output.
// Calling it again with the same args re-reads the file (SIGHUP reload).
func ParseFlags(args []string, output io.Writer) (Config, error) {
	// The first pass checks the arguments and finds --config; the second
	// applies them on top of the file.
	var scratch Config
	first := newRunFlags(&scratch, output)
	if err := first.parse(args); err != nil {
		return Config{}, err
	}
	var c Config
	if first.file != "" {
		var err error
		if c, err = LoadFile(first.file); err != nil {
			return Config{}, err
		}
	}
	second := newRunFlags(&c, io.Discard)
	if err := second.parse(args); err != nil {
		return Config{}, err
	}
	exportName := func(e Export) string { return e.Name }
	importName := func(i Import) string { return i.Name }
	routeService := func(r Route) string { return r.Service }
	if err := errors.Join(
		repeated("--export NAME", second.exports.items, exportName),
		repeated("--import NAME", second.imports.items, importName),
		repeated("--route SERVICE", second.routes.items, routeService),
	); err != nil {
		return Config{}, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	c.Exports = merge(c.Exports, second.exports.items, exportName)
	c.Imports = merge(c.Imports, second.imports.items, importName)
	c.Routes = merge(c.Routes, second.routes.items, routeService)
	c.ProtoDescriptors = merge(c.ProtoDescriptors, second.protos.items, func(p string) string { return p })
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// runFlags are the flags of `vatcar run`, bound to the fields of a Config.
// Each flag's default is the field's value at binding time, so parsing into
// a config loaded from the file changes only the fields the flags name. The
// repeatable flags collect into lists, merged with the file's by ParseFlags.
type runFlags struct {
	fs      *flag.FlagSet
	file    string
	exports listFlag[Export]
	imports listFlag[Import]
	routes  listFlag[Route]
	protos  listFlag[string]
}

func newRunFlags(c *Config, output io.Writer) *runFlags {
	r := &runFlags{fs: flag.NewFlagSet("vatcar run", flag.ContinueOnError)}
	r.exports.parse, r.imports.parse, r.routes.parse = ParseExport, ParseImport, ParseRoute
	r.protos.parse = func(s string) (string, error) { return s, nil }
	fs := r.fs
	fs.SetOutput(output)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: vatcar run [--config FILE] [flags]\n\nflags override the config file; --export, --import and --route repeat:")
		fs.PrintDefaults()
	}
	fs.StringVar(&r.file, "config", "", "YAML config `FILE` with the same settings; flags override it")
	fs.StringVar(&c.Listen, "listen", c.Listen, "CapTP listen `ADDR`: tcp:HOST:PORT, tcp:[V6]:PORT or unix:PATH; omitted: a client-only vat")
	fs.StringVar(&c.PublicAddress, "public-address", c.PublicAddress, "`ADDR` written into sturdy URIs (default: the listen address)")
	fs.StringVar(&c.SecretKeyFile, "secret-key-file", c.SecretKeyFile, "PEM key `PATH`, created with mode 0600 when missing; omitted: an ephemeral key")
	fs.BoolVar(&c.Insecure, "insecure", c.Insecure, "no TLS; URIs read capnp://insecure@...")
	fs.Var(&r.exports, "export", "serve the local gRPC server TARGET (host:port or unix:PATH) as the sturdy ref NAME (`NAME=TARGET`, repeatable)")
	fs.StringVar(&c.CapDir, "cap-dir", c.CapDir, "write `DIR`/NAME.cap (URI + newline, mode 0600) for each export")
	fs.Var(&r.imports, "import", "expose an imported ref as a local gRPC endpoint (`NAME=URI|@FILE[,listen=HOST:PORT]`, repeatable)")
	fs.StringVar(&c.AdminListen, "admin-listen", c.AdminListen, "admin gRPC API on `ADDR`: unix:PATH (a socket in a directory only this user may enter) or HOST:PORT (TCP: anyone who reaches it may mint, revoke and add exports) (default unix:$XDG_RUNTIME_DIR/vatcar/admin.sock, else unix:$TMPDIR/vatcar-UID/admin.sock; off: none)")
	fs.StringVar(&c.HealthListen, "health-listen", c.HealthListen, "/healthz, /readyz and /metrics on `HOST:PORT` (default "+DefaultHealthListen+", or the admin's port when --admin-listen is HOST:PORT; off: none)")
	fs.StringVar(&c.GRPCListen, "grpc-listen", c.GRPCListen, "shared gRPC endpoint `HOST:PORT` routing calls by gRPC service name to imports (see --route)")
	fs.Var(&r.routes, "route", "on --grpc-listen, send gRPC service SERVICE (or * for any other) to import IMPORT (`SERVICE=IMPORT`, repeatable)")
	fs.Var(&c.MaxMessageSize, "max-message-size", "largest gRPC message in `BYTES` (suffixes KiB, MiB, GiB; default 4MiB)")
	fs.Var(&c.MaxMetadataSize, "max-metadata-size", "largest metadata (headers, or trailers) of one call in `BYTES`, counted as HTTP/2 does; over it the call fails with RESOURCE_EXHAUSTED (suffixes KiB, MiB; default 64KiB)")
	fs.IntVar(&c.MaxConcurrentCalls, "max-concurrent-calls", c.MaxConcurrentCalls, "calls one peer connection may run at once on each of our exports, and the bound of each import's calls, shared by its apps' connections (`N`, default "+strconv.Itoa(DefaultMaxConcurrentCalls)+")")
	fs.Var((*durationFlag)(&c.StreamIdleTimeout), "stream-idle-timeout", "end a peer's stream on our exports, or an app's on our imports, once nothing passed on it for `DURATION`, with DEADLINE_EXCEEDED (default 0: off)")
	fs.IntVar(&c.MaxConnections, "max-connections", c.MaxConnections, "inbound CapTP connections the vat holds at once; over it new ones are refused (`N`, default "+strconv.Itoa(DefaultMaxConnections)+")")
	fs.Var((*durationFlag)(&c.HeartbeatInterval), "heartbeat-interval", "how often the vat checks, by one round trip, a peer connection on which nothing arrived (`DURATION`, default "+DefaultHeartbeatInterval.String()+"; negative: no heartbeat)")
	fs.StringVar(&c.HostsFile, "hosts-file", c.HostsFile, "resolve import host names from the hosts(5)-style `FILE` before DNS (re-read at each resolution)")
	fs.Var((*durationFlag)(&c.HeartbeatTimeout), "heartbeat-timeout", "close a peer connection whose heartbeat gets no answer within `DURATION` (default "+DefaultHeartbeatTimeout.String()+")")
	fs.Var(&r.protos, "proto-descriptors", "FileDescriptorSet `FILE` (protoc --descriptor_set_out) of bridged services: their unary methods take the fast path (repeatable)")
	fs.IntVar(&c.CPUs, "cpus", c.CPUs, "CPUs the Go runtime runs on at once, GOMAXPROCS (`N`, default "+strconv.Itoa(DefaultCPUs)+" unless the environment sets GOMAXPROCS)")
	fs.Var((*durationFlag)(&c.ClockSkew), "clock-skew", "accept narrowed refs this long past their expiry, for clocks that disagree (`DURATION`, default 30s)")
	fs.Var((*durationFlag)(&c.DrainTimeout), "drain-timeout", "how long in-flight calls may run after SIGTERM (`DURATION`, default "+DefaultDrainTimeout.String()+")")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "log `FORMAT`: text or json (default text)")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "log `LEVEL`: debug, info, warn or error (default info); URIs are logged only at debug")
	fs.StringVar(&c.Revocations, "revocations", c.Revocations, "revocation list `FILE`: one revoked capnp:// URI or revocation id per line, # comments; re-read on change and SIGHUP")
	fs.StringVar(&c.ReadyFile, "ready-file", c.ReadyFile, "write the bound addresses as JSON to `PATH` once ready")
	return r
}

// parse parses args; errors wrap ErrConfig.
func (r *runFlags) parse(args []string) error {
	if err := r.fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if r.fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", ErrConfig, r.fs.Arg(0))
	}
	return nil
}

// LoadFile reads a YAML config file strictly: unknown and duplicate fields
// are errors. The result is not validated. Errors wrap ErrConfig.
func LoadFile(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("%w: read config file: %w", ErrConfig, err)
	}
	var c Config
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return Config{}, fmt.Errorf("%w: config file %s: %w", ErrConfig, path, err)
	}
	return c, nil
}

// ParseExport parses an --export value, NAME=TARGET. Only the shape is
// checked here; Config.Validate checks the parts.
func ParseExport(s string) (Export, error) {
	name, target, ok := strings.Cut(s, "=")
	if !ok {
		return Export{}, fmt.Errorf("--export %q: want NAME=TARGET", s)
	}
	return Export{Name: name, Target: target}, nil
}

// ParseImport parses an --import value, NAME=URI|@FILE[,listen=HOST:PORT].
// Only the shape is checked here; Config.Validate checks the parts.
func ParseImport(s string) (Import, error) {
	name, rest, ok := strings.Cut(s, "=")
	if !ok {
		return Import{}, fmt.Errorf("--import %q: want NAME=URI|@FILE[,listen=HOST:PORT]", hideServiceID(s))
	}
	parts := strings.Split(rest, ",")
	im := Import{Name: name, URI: parts[0]}
	for _, opt := range parts[1:] {
		key, value, _ := strings.Cut(opt, "=")
		switch key {
		case "listen":
			im.Listen = value
		default:
			return Import{}, fmt.Errorf("--import %q: unknown option %q (want listen=HOST:PORT)", name+"="+hideServiceID(parts[0])+","+strings.Join(parts[1:], ","), opt)
		}
	}
	return im, nil
}

// hideServiceID returns s for an error message, with the service id (the
// last path segment) hidden when s looks like a sturdy URI, even a
// malformed one ("capnp" in it): a bearer secret, even in a wrong flag.
func hideServiceID(s string) string {
	if !strings.Contains(strings.ToLower(s), "capnp") {
		return s
	}
	if i := strings.LastIndex(s, "/"); i >= 0 {
		return s[:i+1] + "..."
	}
	return "..."
}

// ParseRoute parses a --route value, SERVICE=IMPORT.
func ParseRoute(s string) (Route, error) {
	service, imp, ok := strings.Cut(s, "=")
	if !ok {
		return Route{}, fmt.Errorf("--route %q: want SERVICE=IMPORT", s)
	}
	return Route{Service: service, Import: imp}, nil
}

// repeated reports the first key that two of items share, as the flag what
// given twice: a flag replaces the config file's entry of the same name, but
// two flags naming one entry are a mistake, not an override.
func repeated[T any](what string, items []T, key func(T) string) error {
	seen := make(map[string]bool, len(items))
	for _, it := range items {
		k := key(it)
		if seen[k] {
			return fmt.Errorf("%s %q given twice", what, k)
		}
		seen[k] = true
	}
	return nil
}

// merge returns base with each of over appended, or replacing the entry of
// base with the same key.
func merge[T any](base, over []T, key func(T) string) []T {
	out := append([]T(nil), base...)
	for _, o := range over {
		replaced := false
		for i := range out {
			if key(out[i]) == key(o) {
				out[i], replaced = o, true
				break
			}
		}
		if !replaced {
			out = append(out, o)
		}
	}
	return out
}

// listFlag is a repeatable flag whose values parse into T.
type listFlag[T any] struct {
	items []T
	parse func(string) (T, error)
}

func (l *listFlag[T]) String() string { return "" }

func (l *listFlag[T]) Set(s string) error {
	v, err := l.parse(s)
	if err != nil {
		return err
	}
	l.items = append(l.items, v)
	return nil
}

// ParseByteSize reads a byte count with an optional suffix: B, KiB, MiB or
// GiB (also K, M, G, KB, MB, GB as binary units).
func ParseByteSize(s string) (int, error) {
	units := []struct {
		suffix string
		mult   int64
	}{
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
		{"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30},
		{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"B", 1},
	}
	num, mult := s, int64(1)
	for _, u := range units {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			num, mult = v, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	if err != nil || n < 0 || n > (1<<40)/mult {
		return 0, fmt.Errorf("bad size %q: want a byte count like 4194304 or 4MiB", s)
	}
	return int(n * mult), nil
}

// durationFlag is a flag holding a Duration.
type durationFlag Duration

func (d *durationFlag) String() string { return time.Duration(*d).String() }

func (d *durationFlag) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = durationFlag(v)
	return nil
}
