package sidecar

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/vatcar/vatcar/bridge"
	"github.com/vatcar/vatcar/vat"
)

// Defaults used when a Config field is zero.
const (
	// DefaultHealthListen is where /healthz, /readyz and /metrics listen
	// when Config.HealthListen is empty and the admin API is not on TCP (the
	// admin listener's old default port). The admin API's default is a Unix
	// socket: see DefaultAdminListen.
	DefaultHealthListen = "127.0.0.1:7460"
	// AdminListenOff turns the admin listener (or, as HealthListen, the
	// health listener) off.
	AdminListenOff = "off"
	// DefaultMaxMessageSize is the largest gRPC message when
	// Config.MaxMessageSize is zero (gRPC's own default).
	DefaultMaxMessageSize = 4 << 20
	// DefaultMaxMetadataSize is the largest metadata of a call (its
	// headers, or its trailers) when Config.MaxMetadataSize is zero: 64 KiB,
	// the order of Envoy's 60 KiB.
	DefaultMaxMetadataSize = bridge.DefaultMaxMetadataSize
	// MaxMaxMetadataSize bounds Config.MaxMetadataSize (grpc-go's own limit
	// on a header list it reads).
	MaxMaxMetadataSize = bridge.MaxMetadataSizeLimit
	// MaxMaxMessageSize bounds Config.MaxMessageSize.
	MaxMaxMessageSize = 1 << 30
	// DefaultMaxConcurrentCalls bounds the calls a peer connection may run at
	// once on our exports when Config.MaxConcurrentCalls is zero.
	DefaultMaxConcurrentCalls = 1024
	// DefaultDrainTimeout is how long in-flight calls may run after SIGTERM
	// when Config.DrainTimeout is zero.
	DefaultDrainTimeout = 30 * time.Second
	// DefaultMaxConnections bounds the inbound CapTP connections the vat
	// holds at once when Config.MaxConnections is zero.
	DefaultMaxConnections = vat.DefaultMaxConnections
	// DefaultHeartbeatInterval is how long a peer connection may stay silent
	// before the vat checks that the peer still answers, when
	// Config.HeartbeatInterval is zero.
	DefaultHeartbeatInterval = vat.DefaultHeartbeatInterval
	// DefaultHeartbeatTimeout is how long that check waits for the answer
	// when Config.HeartbeatTimeout is zero.
	DefaultHeartbeatTimeout = vat.DefaultHeartbeatTimeout
	// DefaultCPUs is how many CPUs `vatcar run` lets the Go runtime use at
	// once (GOMAXPROCS) when Config.CPUs is zero and the environment does not
	// set GOMAXPROCS: one, like a single-worker nginx or linkerd's proxy,
	// sized for the one pod a sidecar serves. On this project's benchmark it
	// also costs less CPU per call than two (docs/bench.md).
	DefaultCPUs = 1
	// maxCPUs bounds Config.CPUs: a typo, not a machine.
	maxCPUs = 1024
	// RouteDefault is the Route.Service that matches every gRPC service no
	// other route names.
	RouteDefault = "*"
)

// Config is the whole configuration of a sidecar. The YAML config file holds
// the same fields (their json names, camelCase); flags override it. The zero
// value is a valid client-only sidecar with an ephemeral key, TLS on, the
// admin API on its default Unix socket (DefaultAdminListen), health and
// metrics on DefaultHealthListen, and no exports or imports.
type Config struct {
	// Listen is the CapTP listen address: tcp:HOST:PORT, tcp:[V6]:PORT or
	// unix:PATH. Empty: a client-only vat, which can import but not export.
	Listen string `json:"listen,omitempty"`
	// PublicAddress is the address written into sturdy URIs, in the same
	// syntax as Listen. Empty: the address Listen bound (port 0 resolved).
	PublicAddress string `json:"publicAddress,omitempty"`
	// SecretKeyFile is the vat's PEM key, created with mode 0600 when
	// missing. Empty: an ephemeral key, so export URIs change on restart.
	SecretKeyFile string `json:"secretKeyFile,omitempty"`
	// Insecure turns TLS off; URIs read capnp://insecure@...
	Insecure bool `json:"insecure,omitempty"`
	// Exports are the local gRPC servers served as sturdy refs.
	Exports []Export `json:"exports,omitempty"`
	// CapDir, when set, receives DIR/NAME.cap (URI + newline, mode 0600) for
	// each export once the vat listens.
	CapDir string `json:"capDir,omitempty"`
	// Imports are the sturdy refs exposed as local gRPC endpoints.
	Imports []Import `json:"imports,omitempty"`
	// AdminListen is where the admin gRPC API (which mints, revokes and adds
	// exports) listens: "unix:/abs/path" for a Unix socket (mode 0600) in a
	// directory only this user may enter (created with mode 0700; an
	// existing one must belong to this user and is made 0700), or host:port
	// for TCP (an empty host means 127.0.0.1), which every process that can
	// reach the port may use. Empty: DefaultAdminListen(), a Unix socket;
	// "off": no admin API.
	AdminListen string `json:"adminListen,omitempty"`
	// HealthListen is the host:port of /healthz, /readyz and /metrics
	// (HTTP/1.1 and h2c), which may face the pod network (kubelet httpGet
	// probes, Prometheus); an empty host means 127.0.0.1. Empty: the
	// admin's port when AdminListen is host:port (one port serving both, as
	// before the split), else DefaultHealthListen; the same host:port as
	// AdminListen also serves both on one port; "off": no health listener.
	HealthListen string `json:"healthListen,omitempty"`
	// GRPCListen, when set, is one shared gRPC endpoint (host:port; an empty
	// host means 127.0.0.1) that routes each call by its gRPC service name to
	// an import, per Routes.
	GRPCListen string `json:"grpcListen,omitempty"`
	// Routes map gRPC service names to imports on GRPCListen.
	Routes []Route `json:"routes,omitempty"`
	// MaxMessageSize bounds one gRPC message in bytes, both directions.
	// Zero: DefaultMaxMessageSize.
	MaxMessageSize ByteSize `json:"maxMessageSize,omitempty"`
	// MaxMetadataSize bounds the metadata of one call in bytes, counted as
	// HTTP/2 does (key + value + 32 per entry): an app's request headers,
	// headers and trailers coming back from an export's backend, and
	// metadata arriving over CapTP. Over it the call fails with
	// RESOURCE_EXHAUSTED before the metadata crosses. Zero:
	// DefaultMaxMetadataSize.
	MaxMetadataSize ByteSize `json:"maxMetadataSize,omitempty"`
	// MaxConcurrentCalls bounds the calls one peer connection may run at once
	// on each of our exports (over it: RESOURCE_EXHAUSTED), and the calls
	// each import runs at once, which stay below it, shared by the apps'
	// connections: one app connection holds at most as many as stay free
	// (alone, half). Zero: DefaultMaxConcurrentCalls.
	MaxConcurrentCalls int `json:"maxConcurrentCalls,omitempty"`
	// StreamIdleTimeout, when positive, ends a stream on which no message
	// has passed, either way, for that long, on both sides: a peer's
	// stream on one of our exports (the backend call is cancelled and the
	// peer's app gets DEADLINE_EXCEEDED "vatcar: stream idle for D
	// (--stream-idle-timeout)"), and an app's stream on one of our imports
	// (the app gets that status and the CapTP call is cancelled). Either
	// frees the stream's call slot (MaxConcurrentCalls). Zero: off, streams
	// last as long as their deadlines.
	StreamIdleTimeout Duration `json:"streamIdleTimeout,omitempty"`
	// MaxConnections bounds the inbound CapTP connections the vat holds at
	// once, counting those still in their TLS handshake; one more is closed
	// at once and counted in
	// vatcar_vat_refused_connections_total{reason="max connections"}. Zero:
	// DefaultMaxConnections.
	MaxConnections int `json:"maxConnections,omitempty"`
	// HeartbeatInterval is how often the vat checks each peer connection,
	// inbound or outbound, on which nothing arrived meanwhile: it makes one
	// cheap round trip, and closes the connection when the peer does not
	// answer within HeartbeatTimeout (a frozen process, which TCP keepalive
	// cannot see). Zero: DefaultHeartbeatInterval; negative turns the check
	// off.
	HeartbeatInterval Duration `json:"heartbeatInterval,omitempty"`
	// HeartbeatTimeout is how long a heartbeat waits for the peer's answer
	// before closing the connection. Zero: DefaultHeartbeatTimeout.
	HeartbeatTimeout Duration `json:"heartbeatTimeout,omitempty"`
	// ProtoDescriptors are files holding serialized
	// google.protobuf.FileDescriptorSets (protoc --descriptor_set_out) of the
	// gRPC services this sidecar bridges, either way. They tell the bridge
	// each method's kind: calls of methods known to be unary take a fast
	// path (one goroutine fewer per call on each side); every other method,
	// and every method when this is empty, takes the general path, which
	// carries every kind. Both sidecars of a pair benefit from having them.
	ProtoDescriptors []string `json:"protoDescriptors,omitempty"`
	// CPUs is how many CPUs the sidecar's Go runtime runs on at once
	// (GOMAXPROCS), applied by `vatcar run` at start (TuneRuntime). Zero: GOMAXPROCS from
	// the environment if set, else DefaultCPUs. A library user of Sidecar
	// sets GOMAXPROCS itself; New does not touch the runtime.
	CPUs int `json:"cpus,omitempty"`
	// DrainTimeout is how long in-flight calls may run after SIGTERM.
	// Zero: DefaultDrainTimeout.
	DrainTimeout Duration `json:"drainTimeout,omitempty"`
	// ClockSkew is how far past its expiry (or before its not-before) a
	// narrowed ref still works, for clocks that disagree. Zero:
	// vat.DefaultClockSkew (30s); negative: none.
	ClockSkew Duration `json:"clockSkew,omitempty"`
	// LogFormat is "text" (the default when empty) or "json".
	LogFormat string `json:"logFormat,omitempty"`
	// LogLevel is "debug", "info" (the default when empty), "warn" or
	// "error". Sturdy URIs are logged only at debug.
	LogLevel string `json:"logLevel,omitempty"`
	// Revocations is the revocation list file: one revoked sturdy URI or
	// revocation id per line, '#' comments (see ParseRevocationList). It is
	// read before anything is exported, whenever it changes (checked every
	// second; a Kubernetes ConfigMap volume's symlink swap counts) and on
	// SIGHUP. An export it names is revoked like by Revoke. A missing file
	// revokes nothing (a warning); a line that is not an entry is logged and
	// skipped. Ids once read stay revoked until the sidecar restarts. Empty:
	// no list; Revoke is then local to this sidecar.
	Revocations string `json:"revocations,omitempty"`
	// ReadyFile, when set, receives a JSON description of the bound addresses
	// (see Addresses) once the sidecar is ready, written with mode 0600; it is
	// removed when the sidecar closes.
	ReadyFile string `json:"readyFile,omitempty"`
	// HostsFile, when set, is a hosts(5)-style table ("IP NAME..." per
	// line, # comments), re-read at each resolution and consulted before
	// the system resolver for the host names of imports: for tests and
	// hosts without DNS. Empty: the system resolver only.
	HostsFile string `json:"hostsFile,omitempty"`
	// Resolve, when not nil, resolves the host names of imports instead of
	// HostsFile and the system resolver (tests).
	Resolve Resolver `json:"-"`

	// defaultAdmin and defaultHealth record that withDefaults chose
	// AdminListen and HealthListen: a second sidecar on the host finds
	// them taken and takes listeners of its own (startAdminListeners).
	defaultAdmin, defaultHealth bool
}

// Export is one local gRPC server served as the sturdy ref Name.
type Export struct {
	// Name names the export; the service id is derived from the key and Name.
	Name string `json:"name"`
	// Target is the local gRPC server: host:port or unix:/abs/path.
	Target string `json:"target"`
}

// Import is one sturdy ref exposed as a local gRPC endpoint.
type Import struct {
	// Name names the import (in routes, logs, metrics and the admin API).
	Name string `json:"name"`
	// URI is a capnp:// sturdy ref, or @FILE to read one from a cap file.
	URI string `json:"uri"`
	// Listen is the local gRPC endpoint, host:port; an empty host means
	// 127.0.0.1 (name 0.0.0.0 to face the network). Empty: a free port on
	// 127.0.0.1 when no route names this import; no own endpoint when one
	// does (it is reached through GRPCListen).
	Listen string `json:"listen,omitempty"`
}

// Route sends the calls to one gRPC service on GRPCListen to an import.
type Route struct {
	// Service is a fully qualified gRPC service name ("pkg.Service"), or
	// RouteDefault ("*") for every service no other route names.
	Service string `json:"service"`
	// Import is the name of the import that serves it.
	Import string `json:"import"`
}

// ByteSize is a size in bytes, written in the config file as a number or,
// like the flag, as a string with a suffix ("16MiB"; see ParseByteSize).
type ByteSize int

// UnmarshalJSON reads a byte count or a string that ParseByteSize takes.
func (b *ByteSize) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		var n int
		if err := json.Unmarshal(data, &n); err != nil {
			return fmt.Errorf("size must be a byte count or a string like \"4MiB\": %w", err)
		}
		*b = ByteSize(n)
		return nil
	}
	n, err := ParseByteSize(s)
	if err != nil {
		return err
	}
	*b = ByteSize(n)
	return nil
}

// String returns the byte count (flag.Value).
func (b *ByteSize) String() string { return strconv.Itoa(int(*b)) }

// Set parses s with ParseByteSize (flag.Value).
func (b *ByteSize) Set(s string) error {
	n, err := ParseByteSize(s)
	if err != nil {
		return err
	}
	*b = ByteSize(n)
	return nil
}

// Duration is a time.Duration written as "30s" in the config file.
type Duration time.Duration

// MarshalJSON writes d as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a Go duration string ("30s", "1m30s").
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"30s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

var (
	namePattern    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
	servicePattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$`)
)

// maxNameLen matches the admin API's rule for names.
const maxNameLen = 63

// Validate checks every field and reports each problem, naming the offending
// value; the error wraps ErrConfig. It reads no files.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf(format, args...))
	}
	if c.Listen != "" {
		if err := checkVatAddress(c.Listen); err != nil {
			bad("bad --listen %q: %w", c.Listen, err)
		}
	}
	if c.PublicAddress != "" {
		if c.Listen == "" {
			bad("--public-address %q needs --listen", c.PublicAddress)
		} else if err := checkVatAddress(c.PublicAddress); err != nil {
			bad("bad --public-address %q: %w", c.PublicAddress, err)
		}
	}
	names := map[string]bool{}
	for _, e := range c.Exports {
		if err := CheckName(e.Name); err != nil {
			bad("bad export NAME %q: %w", e.Name, err)
		} else if names[e.Name] {
			bad("export NAME %q given twice", e.Name)
		}
		names[e.Name] = true
		if err := CheckTarget(e.Target); err != nil {
			bad("bad export TARGET %q: %w", e.Target, err)
		}
	}
	if len(c.Exports) > 0 && c.Listen == "" {
		bad("--export %q needs --listen: a client-only vat cannot export", c.Exports[0].Name)
	}
	names = map[string]bool{}
	for _, im := range c.Imports {
		if err := CheckName(im.Name); err != nil {
			bad("bad import NAME %q: %w", im.Name, err)
		} else if names[im.Name] {
			bad("import NAME %q given twice", im.Name)
		}
		names[im.Name] = true
		if err := checkImportURI(im.URI); err != nil {
			bad("bad import URI %q: %w", hideServiceID(im.URI), err)
		}
		if im.Listen != "" {
			if err := CheckHostPort(im.Listen); err != nil {
				bad("bad import listen %q: %w", im.Listen, err)
			}
		}
	}
	if c.AdminListen != "" && c.AdminListen != AdminListenOff {
		if err := checkAdminListen(c.AdminListen); err != nil {
			bad("bad --admin-listen %q: %w", c.AdminListen, err)
		}
	}
	if c.HealthListen != "" && c.HealthListen != AdminListenOff {
		if err := CheckHostPort(c.HealthListen); err != nil {
			bad("bad --health-listen %q: %w", c.HealthListen, err)
		}
	}
	if c.GRPCListen != "" {
		if err := CheckHostPort(c.GRPCListen); err != nil {
			bad("bad --grpc-listen %q: %w", c.GRPCListen, err)
		}
	}
	services := map[string]bool{}
	for _, r := range c.Routes {
		if r.Service != RouteDefault && !servicePattern.MatchString(r.Service) {
			bad("bad route SERVICE %q: want a gRPC service name like pkg.Service, or *", r.Service)
		} else if services[r.Service] {
			bad("route SERVICE %q given twice", r.Service)
		}
		services[r.Service] = true
		if !names[r.Import] {
			bad("route %q names unknown import %q", r.Service, r.Import)
		}
	}
	if len(c.Routes) > 0 && c.GRPCListen == "" {
		bad("--route %q needs --grpc-listen", c.Routes[0].Service)
	}
	if c.MaxMessageSize < 0 || c.MaxMessageSize > MaxMaxMessageSize {
		bad("bad --max-message-size %d: want 0 to %d", c.MaxMessageSize, MaxMaxMessageSize)
	}
	if c.MaxMetadataSize < 0 || c.MaxMetadataSize > MaxMaxMetadataSize {
		bad("bad --max-metadata-size %d: want 0 to %d", c.MaxMetadataSize, MaxMaxMetadataSize)
	}
	if c.MaxConcurrentCalls < 0 {
		bad("bad --max-concurrent-calls %d: must not be negative", c.MaxConcurrentCalls)
	}
	if c.StreamIdleTimeout < 0 {
		bad("bad --stream-idle-timeout %s: must not be negative (0 turns it off)", time.Duration(c.StreamIdleTimeout))
	}
	if c.MaxConnections < 0 {
		bad("bad --max-connections %d: must not be negative", c.MaxConnections)
	}
	if c.HeartbeatTimeout < 0 {
		bad("bad --heartbeat-timeout %s: must not be negative", time.Duration(c.HeartbeatTimeout))
	}
	if c.CPUs < 0 || c.CPUs > maxCPUs {
		bad("bad --cpus %d: want 0 (the default) to %d", c.CPUs, maxCPUs)
	}
	if c.DrainTimeout < 0 {
		bad("bad --drain-timeout %s: must not be negative", time.Duration(c.DrainTimeout))
	}
	switch c.LogFormat {
	case "", "text", "json":
	default:
		bad("bad --log-format %q: want text or json", c.LogFormat)
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		bad("bad --log-level %q: want debug, info, warn or error", c.LogLevel)
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrConfig, errors.Join(errs...))
}

// CheckName reports whether s is a valid export or import name: letters,
// digits, '.', '_' and '-', starting with a letter or digit, at most 63
// bytes (the admin API's rule).
func CheckName(s string) error {
	if s == "" {
		return errors.New("empty")
	}
	if len(s) > maxNameLen {
		return fmt.Errorf("longer than %d bytes", maxNameLen)
	}
	if !namePattern.MatchString(s) {
		return errors.New("want letters, digits, '.', '_' and '-', starting with a letter or digit")
	}
	return nil
}

// CheckTarget reports whether s is a valid export target: host:port with a
// numeric port, or unix:/abs/path.
func CheckTarget(s string) error {
	if path, ok := strings.CutPrefix(s, "unix:"); ok {
		if !strings.HasPrefix(path, "/") {
			return errors.New("unix socket path must be absolute")
		}
		return nil
	}
	return CheckHostPort(s)
}

// CheckHostPort reports whether s is host:port with a numeric port.
func CheckHostPort(s string) error {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return err
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("bad port %q", port)
	}
	return nil
}

// parseLevel reads a --log-level value; empty means info.
func parseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "", "info":
		return slog.LevelInfo, nil
	case "debug":
		return slog.LevelDebug, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("unknown log level %q", s)
}

// withDefaults returns c with zero fields replaced by their defaults.
func (c Config) withDefaults() Config {
	if c.HealthListen == "" {
		c.HealthListen = DefaultHealthListen
		if adminOnTCP(c.AdminListen) {
			c.HealthListen = c.AdminListen
		} else {
			c.defaultHealth = true
		}
	}
	if c.AdminListen == "" {
		c.AdminListen = DefaultAdminListen()
		c.defaultAdmin = true
	}
	if c.MaxMessageSize == 0 {
		c.MaxMessageSize = DefaultMaxMessageSize
	}
	if c.MaxMetadataSize == 0 {
		c.MaxMetadataSize = DefaultMaxMetadataSize
	}
	if c.MaxConcurrentCalls == 0 {
		c.MaxConcurrentCalls = DefaultMaxConcurrentCalls
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = Duration(DefaultDrainTimeout)
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = DefaultMaxConnections
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = Duration(DefaultHeartbeatInterval)
	}
	if c.HeartbeatTimeout == 0 {
		c.HeartbeatTimeout = Duration(DefaultHeartbeatTimeout)
	}
	return c
}
