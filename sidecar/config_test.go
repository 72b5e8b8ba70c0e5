package sidecar

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

const testURI = "capnp://sha-256:s16WV4JeGusAL_nTjvICiQOFqm3LqYrDj3K-HXdMi8s@localhost:7000/bWFpbg"

func TestConfigValidate(t *testing.T) {
	base := Config{Listen: "tcp:127.0.0.1:0"}
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string // substring; "" means valid
	}{
		{"zero value", func(c *Config) { *c = Config{} }, ""},
		{"listen only", func(c *Config) {}, ""},
		{"v6 listen", func(c *Config) { c.Listen = "tcp:[::1]:7000" }, ""},
		{"unix listen", func(c *Config) { c.Listen = "unix:/tmp/v.sock" }, ""},
		{"bad listen", func(c *Config) { c.Listen = "127.0.0.1:7000" }, `bad --listen "127.0.0.1:7000"`},
		{"listen bad port", func(c *Config) { c.Listen = "tcp:h:99999" }, `bad --listen "tcp:h:99999"`},
		{"public without listen", func(c *Config) { c.Listen = ""; c.PublicAddress = "tcp:h:1" }, `--public-address "tcp:h:1" needs --listen`},
		{"bad public", func(c *Config) { c.PublicAddress = "h" }, `bad --public-address "h"`},
		{"export ok", func(c *Config) { c.Exports = []Export{{"echo", "127.0.0.1:50051"}, {"u", "unix:/run/a.sock"}} }, ""},
		{"bad export name", func(c *Config) { c.Exports = []Export{{"-echo", "h:1"}} }, `bad export NAME "-echo"`},
		{"empty export name", func(c *Config) { c.Exports = []Export{{"", "h:1"}} }, `bad export NAME ""`},
		{"long export name", func(c *Config) { c.Exports = []Export{{strings.Repeat("a", 64), "h:1"}} }, `longer than 63`},
		{"dup export", func(c *Config) { c.Exports = []Export{{"a", "h:1"}, {"a", "h:2"}} }, `export NAME "a" given twice`},
		{"bad target", func(c *Config) { c.Exports = []Export{{"a", "nohost"}} }, `bad export TARGET "nohost"`},
		{"relative unix target", func(c *Config) { c.Exports = []Export{{"a", "unix:rel.sock"}} }, `bad export TARGET "unix:rel.sock"`},
		{"export without listen", func(c *Config) { c.Listen = ""; c.Exports = []Export{{"a", "h:1"}} }, `--export "a" needs --listen`},
		{"import ok", func(c *Config) { c.Imports = []Import{{"b", testURI, "127.0.0.1:9000"}, {"c", "@/x.cap", ""}} }, ""},
		{"bad import name", func(c *Config) { c.Imports = []Import{{"b c", testURI, ""}} }, `bad import NAME "b c"`},
		{"bad import uri", func(c *Config) { c.Imports = []Import{{"b", "http://x", ""}} }, `bad import URI "http://x"`},
		{"bad import listen", func(c *Config) { c.Imports = []Import{{"b", testURI, "nope"}} }, `bad import listen "nope"`},
		{"dup import", func(c *Config) { c.Imports = []Import{{"b", testURI, ""}, {"b", testURI, ""}} }, `import NAME "b" given twice`},
		{"bad admin", func(c *Config) { c.AdminListen = "localhost" }, `bad --admin-listen "localhost"`},
		{"admin off", func(c *Config) { c.AdminListen = "off" }, ""},
		{"admin socket", func(c *Config) { c.AdminListen = "unix:/run/vatcar/admin.sock" }, ""},
		{"admin socket relative", func(c *Config) { c.AdminListen = "unix:admin.sock" }, `bad --admin-listen "unix:admin.sock": unix socket path must be absolute`},
		{"bad health", func(c *Config) { c.HealthListen = "localhost" }, `bad --health-listen "localhost"`},
		{"metadata size", func(c *Config) { c.MaxMetadataSize = 1 << 20 }, ""},
		{"stream idle timeout", func(c *Config) { c.StreamIdleTimeout = Duration(time.Minute) }, ""},
		{"negative stream idle timeout", func(c *Config) { c.StreamIdleTimeout = Duration(-time.Second) }, "bad --stream-idle-timeout -1s"},
		{"metadata size too big", func(c *Config) { c.MaxMetadataSize = 32 << 20 }, `bad --max-metadata-size 33554432`},
		{"metadata size negative", func(c *Config) { c.MaxMetadataSize = -1 }, `bad --max-metadata-size -1`},
		{"health off", func(c *Config) { c.HealthListen = "off" }, ""},
		{"bad grpc listen", func(c *Config) { c.GRPCListen = ":x" }, `bad --grpc-listen ":x"`},
		{"routes ok", func(c *Config) {
			c.GRPCListen = "127.0.0.1:0"
			c.Imports = []Import{{"b", testURI, ""}}
			c.Routes = []Route{{"grpc.testing.TestService", "b"}, {"*", "b"}}
		}, ""},
		{"route unknown import", func(c *Config) {
			c.GRPCListen = "127.0.0.1:0"
			c.Routes = []Route{{"a.B", "zz"}}
		}, `route "a.B" names unknown import "zz"`},
		{"bad route service", func(c *Config) {
			c.GRPCListen = "127.0.0.1:0"
			c.Imports = []Import{{"b", testURI, ""}}
			c.Routes = []Route{{"a/B", "b"}}
		}, `bad route SERVICE "a/B"`},
		{"route without grpc listen", func(c *Config) {
			c.Imports = []Import{{"b", testURI, ""}}
			c.Routes = []Route{{"a.B", "b"}}
		}, `--route "a.B" needs --grpc-listen`},
		{"negative size", func(c *Config) { c.MaxMessageSize = -1 }, `bad --max-message-size -1`},
		{"huge size", func(c *Config) { c.MaxMessageSize = 2 << 30 }, `bad --max-message-size`},
		{"negative calls", func(c *Config) { c.MaxConcurrentCalls = -1 }, `bad --max-concurrent-calls -1`},
		{"max connections", func(c *Config) { c.MaxConnections = 1 }, ""},
		{"negative max connections", func(c *Config) { c.MaxConnections = -1 }, `bad --max-connections -1: must not be negative`},
		{"heartbeat", func(c *Config) {
			c.HeartbeatInterval, c.HeartbeatTimeout = Duration(time.Second), Duration(time.Minute)
		}, ""},
		{"heartbeat off", func(c *Config) { c.HeartbeatInterval = Duration(-time.Second) }, ""},
		{"negative heartbeat timeout", func(c *Config) { c.HeartbeatTimeout = Duration(-time.Second) }, `bad --heartbeat-timeout -1s: must not be negative`},
		{"negative drain", func(c *Config) { c.DrainTimeout = Duration(-time.Second) }, `bad --drain-timeout -1s`},
		{"bad log format", func(c *Config) { c.LogFormat = "xml" }, `bad --log-format "xml"`},
		{"bad log level", func(c *Config) { c.LogLevel = "loud" }, `bad --log-level "loud"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base
			tt.mod(&c)
			err := c.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want error containing %q", tt.wantErr)
			}
			if !errors.Is(err, ErrConfig) {
				t.Errorf("Validate() = %v, want it to wrap ErrConfig", err)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Validate() = %q, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestConfigValidateReportsEveryProblem(t *testing.T) {
	c := Config{Listen: "x", LogFormat: "xml", Exports: []Export{{"-", "h"}}}
	err := c.Validate()
	for _, want := range []string{`"x"`, `"xml"`, `NAME "-"`, `TARGET "h"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want it to mention %s", err, want)
		}
	}
}

func TestParseFlags(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "vatcar.yaml")
	writeFile(t, file, `
listen: tcp:127.0.0.1:7000
secretKeyFile: /keys/a.pem
exports:
- name: echo
  target: 127.0.0.1:50051
- name: keep
  target: 127.0.0.1:50052
imports:
- name: b
  uri: `+testURI+`
drainTimeout: 5s
maxMessageSize: 16MiB
maxConnections: 5
heartbeatInterval: 20s
heartbeatTimeout: 4s
logLevel: debug
revocations: /lists/revoked.txt
`)
	tests := []struct {
		name string
		args []string
		want Config
	}{
		{
			name: "flags only",
			args: []string{
				"--listen", "tcp:0.0.0.0:7000", "--public-address", "tcp:svc.ns:7000",
				"--secret-key-file", "k.pem", "--insecure",
				"--export", "a=127.0.0.1:1", "--export", "b=unix:/s",
				"--cap-dir", "/caps",
				"--import", "c=" + testURI + ",listen=127.0.0.1:9000", "--import", "d=@/x.cap",
				"--admin-listen", "off", "--grpc-listen", "127.0.0.1:9100",
				"--route", "pkg.S=c", "--route", "*=d",
				"--max-message-size", "16MiB", "--max-concurrent-calls", "7",
				"--max-connections", "3", "--heartbeat-interval", "-1s", "--heartbeat-timeout", "2s",
				"--drain-timeout", "3s", "--log-format", "json", "--log-level", "warn",
				"--ready-file", "/r.json", "--revocations", "/revoked",
			},
			want: Config{
				Listen: "tcp:0.0.0.0:7000", PublicAddress: "tcp:svc.ns:7000",
				SecretKeyFile: "k.pem", Insecure: true,
				Exports:     []Export{{"a", "127.0.0.1:1"}, {"b", "unix:/s"}},
				CapDir:      "/caps",
				Imports:     []Import{{"c", testURI, "127.0.0.1:9000"}, {"d", "@/x.cap", ""}},
				AdminListen: "off", GRPCListen: "127.0.0.1:9100",
				Routes:         []Route{{"pkg.S", "c"}, {"*", "d"}},
				MaxMessageSize: 16 << 20, MaxConcurrentCalls: 7,
				MaxConnections: 3, HeartbeatInterval: Duration(-time.Second), HeartbeatTimeout: Duration(2 * time.Second),
				DrainTimeout: Duration(3 * time.Second), LogFormat: "json", LogLevel: "warn",
				ReadyFile: "/r.json", Revocations: "/revoked",
			},
		},
		{
			name: "file only",
			args: []string{"--config", file},
			want: Config{
				Listen: "tcp:127.0.0.1:7000", SecretKeyFile: "/keys/a.pem",
				Exports:      []Export{{"echo", "127.0.0.1:50051"}, {"keep", "127.0.0.1:50052"}},
				Imports:      []Import{{"b", testURI, ""}},
				DrainTimeout: Duration(5 * time.Second), LogLevel: "debug",
				MaxMessageSize: 16 << 20, Revocations: "/lists/revoked.txt",
				MaxConnections: 5, HeartbeatInterval: Duration(20 * time.Second), HeartbeatTimeout: Duration(4 * time.Second),
			},
		},
		{
			name: "flags override file",
			args: []string{"--config", file, "--listen", "tcp:127.0.0.1:7001", "--log-level", "info",
				"--export", "echo=127.0.0.1:60000", "--export", "new=127.0.0.1:60001",
				"--max-connections", "2", "--heartbeat-interval", "-1s", "--revocations", "/other"},
			want: Config{
				Listen: "tcp:127.0.0.1:7001", SecretKeyFile: "/keys/a.pem",
				Exports: []Export{{"echo", "127.0.0.1:60000"}, {"keep", "127.0.0.1:50052"},
					{"new", "127.0.0.1:60001"}},
				Imports:      []Import{{"b", testURI, ""}},
				DrainTimeout: Duration(5 * time.Second), LogLevel: "info",
				MaxMessageSize: 16 << 20, Revocations: "/other",
				MaxConnections: 2, HeartbeatInterval: Duration(-time.Second), HeartbeatTimeout: Duration(4 * time.Second),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseFlags(tt.args, io.Discard)
			if err != nil {
				t.Fatalf("ParseFlags: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseFlags =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

func TestParseFlagsErrors(t *testing.T) {
	dir := t.TempDir()
	unknownField := filepath.Join(dir, "unknown.yaml")
	writeFile(t, unknownField, "listen: tcp:127.0.0.1:1\nlisen: x\n")
	dupField := filepath.Join(dir, "dup.yaml")
	writeFile(t, dupField, "listen: tcp:127.0.0.1:1\nlisten: tcp:127.0.0.1:2\n")
	badSize := filepath.Join(dir, "badsize.yaml")
	writeFile(t, badSize, "maxMessageSize: lots\n")
	numericSize := filepath.Join(dir, "numeric.yaml")
	writeFile(t, numericSize, "maxMessageSize: 4294967296\n")
	numericTimeout := filepath.Join(dir, "numerictimeout.yaml")
	writeFile(t, numericTimeout, "heartbeatTimeout: 5\n")
	negativeConns := filepath.Join(dir, "negativeconns.yaml")
	writeFile(t, negativeConns, "maxConnections: -1\n")
	misspelledConns := filepath.Join(dir, "misspelledconns.yaml")
	writeFile(t, misspelledConns, "maxConnection: 3\n")
	dupExport := filepath.Join(dir, "dupexport.yaml")
	writeFile(t, dupExport, "listen: tcp:127.0.0.1:1\nexports: [{name: a, target: 127.0.0.1:1}, {name: a, target: 127.0.0.1:2}]\n")
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"unknown flag", []string{"--nope"}, "nope"},
		{"export without =", []string{"--export", "echo"}, `--export "echo": want NAME=TARGET`},
		{"import without =", []string{"--import", "b"}, `--import "b"`},
		{"import bad option", []string{"--import", "b=" + testURI + ",port=1"}, `unknown option "port=1"`},
		{"route without =", []string{"--route", "pkg.S"}, `--route "pkg.S"`},
		{"bad size", []string{"--max-message-size", "lots"}, `bad size "lots"`},
		{"bad duration", []string{"--drain-timeout", "soon"}, `soon`},
		{"max connections not a number", []string{"--max-connections", "many"}, `"many"`},
		{"negative max connections", []string{"--max-connections", "-1"}, `bad --max-connections -1: must not be negative`},
		{"bad heartbeat interval", []string{"--heartbeat-interval", "often"}, `often`},
		{"negative heartbeat timeout", []string{"--heartbeat-timeout", "-3s"}, `bad --heartbeat-timeout -3s: must not be negative`},
		{"heartbeat timeout in the file without a unit", []string{"--config", numericTimeout}, `duration must be a string like "30s"`},
		{"negative max connections in the file", []string{"--config", negativeConns}, `bad --max-connections -1`},
		{"misspelled max connections in the file", []string{"--config", misspelledConns}, `maxConnection`},
		{"stray argument", []string{"extra"}, `unexpected argument "extra"`},
		{"missing file", []string{"--config", filepath.Join(dir, "none.yaml")}, "none.yaml"},
		{"unknown field", []string{"--config", unknownField}, `lisen`},
		{"duplicate field", []string{"--config", dupField}, `listen`},
		{"invalid result", []string{"--listen", "nowhere"}, `bad --listen "nowhere"`},
		{"export flag twice", []string{"--listen", "tcp:127.0.0.1:1", "--export", "a=127.0.0.1:1", "--export", "a=127.0.0.1:2"}, `--export NAME "a" given twice`},
		{"import flag twice", []string{"--import", "b=" + testURI, "--import", "b=" + testURI}, `--import NAME "b" given twice`},
		{"route flag twice", []string{"--import", "b=" + testURI, "--grpc-listen", ":0", "--route", "p.S=b", "--route", "p.S=b"}, `--route SERVICE "p.S" given twice`},
		{"export twice in the file", []string{"--config", dupExport}, `export NAME "a" given twice`},
		{"bad size in the file", []string{"--config", badSize}, `bad size "lots"`},
		{"size in the file over the bound", []string{"--config", numericSize}, `bad --max-message-size 4294967296`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseFlags(tt.args, io.Discard)
			if err == nil {
				t.Fatalf("ParseFlags(%q) = nil error, want one containing %q", tt.args, tt.wantErr)
			}
			if !errors.Is(err, ErrConfig) {
				t.Errorf("ParseFlags error %v does not wrap ErrConfig", err)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseFlags error = %q, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseByteSize(t *testing.T) {
	tests := []struct {
		in   string
		want int
		ok   bool
	}{
		{"0", 0, true}, {"4096", 4096, true}, {"4MiB", 4 << 20, true}, {"1GiB", 1 << 30, true},
		{"16K", 16 << 10, true}, {"7B", 7, true}, {"-1", 0, false}, {"MiB", 0, false}, {"1TiB", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseByteSize(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestImportErrorsHideServiceID(t *testing.T) {
	id := testURI[strings.LastIndex(testURI, "/")+1:]
	for _, in := range []string{
		testURI,                        // no NAME=
		"b=" + testURI + ",lisen=1",    // unknown option
		"b=" + testURI + ",listen=x,y", // unknown option after a good one
	} {
		_, err := ParseImport(in)
		if err == nil || strings.Contains(err.Error(), id) || !strings.Contains(err.Error(), "/...") {
			t.Errorf("ParseImport(%q) = %v: want an error with the service id hidden", in, err)
		}
	}
	c := Config{Imports: []Import{{Name: "b", URI: "capnps" + strings.TrimPrefix(testURI, "capnp")}}}
	if err := c.Validate(); err == nil || strings.Contains(err.Error(), id) {
		t.Errorf("Validate with a mistyped URI = %v: want an error with the service id hidden", err)
	}
}

func FuzzParseImport(f *testing.F) {
	f.Add("b=" + testURI + ",lisen=127.0.0.1:9000")
	f.Add("b=" + testURI + ",listen=127.0.0.1:9000")
	f.Add("b=@/x.cap")
	f.Add("=,,=")
	f.Fuzz(func(t *testing.T, s string) {
		im, err := ParseImport(s)
		if err != nil {
			id := testURI[strings.LastIndex(testURI, "/")+1:]
			if strings.Contains(s, testURI) && strings.Contains(err.Error(), id) {
				t.Errorf("ParseImport(%q) error shows the service id: %v", s, err)
			}
			return
		}
		if !strings.HasPrefix(s, im.Name+"="+im.URI) {
			t.Errorf("ParseImport(%q) = %+v: name and URI are not the value's prefix", s, im)
		}
	})
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// FuzzParseByteSize checks that every accepted size is within the bound and
// that its byte count reads back as the same size.
func FuzzParseByteSize(f *testing.F) {
	for _, s := range []string{"4MiB", "16M", "1GiB", "0", "512B", " 7 KiB", "-1", "99999999999999GiB", "MiB"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseByteSize(s)
		if err != nil {
			return
		}
		if n < 0 || n > 1<<40 {
			t.Fatalf("ParseByteSize(%q) = %d, outside 0 to 1TiB", s, n)
		}
		again, err := ParseByteSize(strconv.Itoa(n))
		if err != nil || again != n {
			t.Errorf("ParseByteSize(%q) = %d, but %d reads back as %d, %v", s, n, n, again, err)
		}
		quoted, _ := json.Marshal(s) // a string always marshals; an accepted size is ASCII
		var b ByteSize
		if err := b.UnmarshalJSON(quoted); err != nil || int(b) != n {
			t.Errorf("ByteSize.UnmarshalJSON(%q) = %d, %v; want %d as ParseByteSize", s, b, err, n)
		}
	})
}
