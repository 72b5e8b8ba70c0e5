package main_test

import (
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

// TestBadConfigExitsWithStatus2 runs `vatcar run` with each kind of bad
// input: it must exit 2 at start-up naming the offending value.
func TestBadConfigExitsWithStatus2(t *testing.T) {
	dir := t.TempDir()
	garbageKey := writeFile(t, dir, "garbage.pem", "not a key")
	garbagePEM := writeFile(t, dir, "garbage-block.pem", "-----BEGIN PRIVATE KEY-----\nbm9wZQ==\n-----END PRIVATE KEY-----\n")
	badYAML := writeFile(t, dir, "bad.yaml", "listen: tcp:127.0.0.1:0\nexprots: []\n")
	garbageCap := writeFile(t, dir, "garbage.cap", "\x00\x01 not a URI \xff\n")
	emptyCap := writeFile(t, dir, "empty.cap", "")
	dupExports := writeFile(t, dir, "dup.yaml", "listen: tcp:127.0.0.1:0\nexports: [{name: a, target: 127.0.0.1:1}, {name: a, target: 127.0.0.1:2}]\n")
	validURI := "capnp://sha-256:s16WV4JeGusAL_nTjvICiQOFqm3LqYrDj3K-HXdMi8s@localhost:7000/bWFpbg"
	tests := []struct {
		name string
		args []string
		want string // must appear in stderr
	}{
		{"bad export NAME", []string{"--listen", "tcp:127.0.0.1:0", "--export", "bad name=127.0.0.1:1"}, `"bad name"`},
		{"bad export TARGET", []string{"--listen", "tcp:127.0.0.1:0", "--export", "ok=nowhere"}, `"nowhere"`},
		{"bad import NAME", []string{"--import", "-x=" + validURI}, `"-x"`},
		{"malformed URI", []string{"--import", "b=capnp://sha-256:%%%@h:1/x"}, `malformed URI "capnp://sha-256:%%%@h:1/..."`},
		{"malformed URI keeps its id secret", []string{"--import", "b=capnp://sha-256:short@h:1/c2VjcmV0"}, `malformed URI "capnp://sha-256:short@h:1/..."`},
		{"URI with unknown hash", []string{"--import", "b=capnp://md5:abc@localhost:7000/eA"}, `md5`},
		{"non-capnp URI", []string{"--import", "b=http://example.com/x"}, `http://example.com/x`},
		{"missing cap file", []string{"--import", "b=@" + filepath.Join(dir, "none.cap")}, `none.cap`},
		{"garbage cap file", []string{"--import", "b=@" + garbageCap}, `malformed URI in cap file "` + garbageCap + `"`},
		{"empty cap file", []string{"--import", "b=@" + emptyCap}, `malformed URI in cap file "` + emptyCap + `"`},
		{"secure URI on an insecure vat", []string{"--insecure", "--import", "b=" + validURI}, `unusable URI "capnp://sha-256:s16WV4JeGusAL_nTjvICiQOFqm3LqYrDj3K-HXdMi8s@localhost:7000/..."`},
		{"bad public address", []string{"--listen", "tcp:127.0.0.1:0", "--public-address", "host:7000"}, `"host:7000"`},
		{"public address without port", []string{"--listen", "tcp:127.0.0.1:0", "--public-address", "tcp:host"}, `"tcp:host"`},
		{"listen address not ours", []string{"--listen", "tcp:192.0.2.1:7000"}, `"tcp:192.0.2.1:7000"`},
		{"export flag twice", []string{"--listen", "tcp:127.0.0.1:0", "--export", "a=127.0.0.1:1", "--export", "a=127.0.0.1:2"}, `--export NAME "a" given twice`},
		{"export twice in the file", []string{"--config", dupExports}, `export NAME "a" given twice`},
		{"import flag twice", []string{"--import", "b=" + validURI, "--import", "b=" + validURI}, `--import NAME "b" given twice`},
		{"unwritable ready file", []string{"--ready-file", filepath.Join(dir, "none", "ready.json")}, `--ready-file "` + filepath.Join(dir, "none", "ready.json") + `"`},
		// A missing key directory is created (0700); one under a file cannot be.
		{"key directory not creatable", []string{"--secret-key-file", filepath.Join(garbageKey, "k.pem")}, filepath.Join(garbageKey, "k.pem")},
		{"bad import listen", []string{"--import", "b=" + validURI + ",listen=nope"}, `"nope"`},
		{"unparsable listen", []string{"--listen", "127.0.0.1:7000"}, `"127.0.0.1:7000"`},
		{"unparsable admin listen", []string{"--admin-listen", "localhost"}, `"localhost"`},
		{"unparsable grpc listen", []string{"--grpc-listen", "x:y"}, `"x:y"`},
		{"unreadable key (directory)", []string{"--secret-key-file", dir}, dir},
		{"unreadable key (garbage)", []string{"--secret-key-file", garbageKey}, garbageKey},
		{"unreadable key (garbage in a PEM block)", []string{"--secret-key-file", garbagePEM}, garbagePEM},
		{"unknown flag", []string{"--frobnicate"}, "frobnicate"},
		{"bad log format", []string{"--log-format", "xml"}, `"xml"`},
		{"bad config field", []string{"--config", badYAML}, "exprots"},
		{"route to unknown import", []string{"--grpc-listen", "127.0.0.1:0", "--route", "a.B=ghost"}, `"ghost"`},
		{"bad max message size", []string{"--max-message-size", "huge"}, `"huge"`},
		{"negative cpus", []string{"--cpus", "-1"}, "bad --cpus -1"},
		{"negative max connections", []string{"--max-connections", "-1"}, "bad --max-connections -1"},
		{"max connections not a number", []string{"--max-connections", "lots"}, `"lots"`},
		{"negative heartbeat timeout", []string{"--heartbeat-timeout", "-5s"}, "bad --heartbeat-timeout -5s"},
		{"bad heartbeat interval", []string{"--heartbeat-interval", "often"}, `"often"`},
		{"missing descriptor set", []string{"--proto-descriptors", filepath.Join(dir, "none.protoset")}, `--proto-descriptors "` + filepath.Join(dir, "none.protoset") + `"`},
		{"garbage descriptor set", []string{"--proto-descriptors", garbageKey}, `--proto-descriptors "` + garbageKey + `"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			expectExit2(t, tt.want, append([]string{"run", "--admin-listen", "127.0.0.1:0"}, tt.args...)...)
		})
	}
}

// TestBadURIArgsExitWithStatus2 covers `vatcar uri` and `vatcar ctl
// add-import` given bad input: exit 2 naming the offending value.
func TestBadURIArgsExitWithStatus2(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "k.pem")
	run(t, "keygen", "--secret-key-file", key)
	garbage := writeFile(t, dir, "garbage.pem", "-----BEGIN PRIVATE KEY-----\nbm9wZQ==\n-----END PRIVATE KEY-----\n")
	garbageCap := writeFile(t, dir, "garbage.cap", "\x00\x01 not a URI \xff\n")
	_, admin := startSidecar(t)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"uri: bad public address", []string{"uri", "--secret-key-file", key, "--public-address", "nope", "svc"}, `"nope"`},
		{"uri: bad NAME", []string{"uri", "--secret-key-file", key, "--public-address", "tcp:h:1", "bad name"}, `"bad name"`},
		{"uri: garbage PEM", []string{"uri", "--secret-key-file", garbage, "--public-address", "tcp:h:1", "svc"}, garbage},
		{"uri: missing key", []string{"uri", "--secret-key-file", filepath.Join(dir, "none.pem"), "--public-address", "tcp:h:1", "svc"}, "none.pem"},
		{"uri --revocation-id: NAME without key", []string{"uri", "--revocation-id", "svc"}, "--secret-key-file is required"},
		{"uri --revocation-id: bad URI", []string{"uri", "--revocation-id", "capnp://sha-256:AAAA@h:1/bWFpbg"}, "Bad sha-256 digest length 3"},
		{"uri --revocation-id: URI without id", []string{"uri", "--revocation-id", "capnp://insecure@h:1"}, "no service id"},
		{"uri --revocation-id: missing cap file", []string{"uri", "--revocation-id", "@" + filepath.Join(dir, "none.cap")}, "none.cap"},
		{"ctl add-import: malformed URI", []string{"ctl", "--admin", admin.Admin, "add-import", "b=capnp://sha-256:%%%@h:1/x"}, `capnp://sha-256:%%%@h:1/...`},
		{"ctl add-import: not capnp", []string{"ctl", "--admin", admin.Admin, "add-import", "b=http://x/y"}, `uri: want a capnp://`},
		{"ctl add-import: missing cap file", []string{"ctl", "--admin", admin.Admin, "add-import", "b=@" + filepath.Join(dir, "none.cap")}, "none.cap"},
		{"ctl add-import: garbage cap file", []string{"ctl", "--admin", admin.Admin, "add-import", "b=@" + garbageCap}, `malformed URI in cap file "` + garbageCap + `"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { expectExit2(t, tt.want, tt.args...) })
	}
	if _, err := os.Stat(filepath.Join(dir, "none.pem")); !os.IsNotExist(err) {
		t.Errorf("vatcar uri created the missing key file: %v", err)
	}
}

// TestBadRefsMapToStatus checks what a client sees for refs that cannot
// work: a wrong key digest, an unknown service id, a backend that is down.
func TestBadRefsMapToStatus(t *testing.T) {
	p := startPair(t)
	uri := strings.TrimSpace(readFile(t, p.capFile))
	// Another vat's digest, same address and id: the TLS handshake must
	// refuse the exporter's key.
	other := filepath.Join(t.TempDir(), "other.pem")
	out := run(t, "keygen", "--secret-key-file", other)
	otherDigest := strings.TrimPrefix(strings.TrimSpace(out), "sha-256:")
	exporterDigest := strings.TrimPrefix(p.exp.Vat, "sha-256:")
	wrongKey := strings.Replace(uri, exporterDigest, otherDigest, 1)
	unknownID := uri[:strings.LastIndex(uri, "/")+1] + "bm8tc3VjaC1zZXJ2aWNl"

	// A backend that is down: an export whose target has no listener.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadTarget := ln.Addr().String()
	ln.Close()
	dir := t.TempDir()
	_, _ = startSidecar(t, "--listen", "tcp:127.0.0.1:0", "--export", "dead="+deadTarget, "--cap-dir", dir)

	_, imp := startSidecar(t,
		"--import", "wrongkey="+wrongKey,
		"--import", "unknown="+unknownID,
		"--import", "dead=@"+filepath.Join(dir, "dead.cap"))
	tests := []struct {
		name     string
		code     codes.Code
		contains string
	}{
		{"wrongkey", codes.Unavailable, "key mismatch"},
		{"unknown", codes.NotFound, "Unknown persistent service ID"},
		{"dead", codes.Unavailable, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := testpb.NewTestServiceClient(dial(t, imp.Imports[tt.name]))
			for i := range 2 { // the first call connects, the second hits the backoff
				start := time.Now()
				_, err := client.EmptyCall(ctxTimeout(t, 10*time.Second), &testpb.Empty{})
				st := status.Convert(err)
				if st.Code() != tt.code || !strings.Contains(st.Message(), tt.contains) {
					t.Errorf("call %d: %v, want %v containing %q", i, err, tt.code, tt.contains)
				}
				if d := time.Since(start); d > 5*time.Second {
					t.Errorf("call %d took %v, want it to fail fast", i, d)
				}
			}
		})
	}
}

// expectExit2 runs `vatcar args...` and checks it exits with status 2 and
// names want on stderr.
func expectExit2(t *testing.T, want string, args ...string) {
	t.Helper()
	p := start(t, args...)
	if code := p.wait(20 * time.Second); code != 2 {
		t.Errorf("exit status = %d, want 2\n%s", code, p.stderr.String())
	}
	if out := p.stderr.String(); !strings.Contains(out, want) {
		t.Errorf("stderr does not name %s:\n%s", want, out)
	}
}

// writeFile writes content to dir/name (mode 0600) and returns the path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// run runs `vatcar args...` to completion and returns its output; it fails
// the test on a non-zero exit status.
func run(t *testing.T, args ...string) string {
	t.Helper()
	p := start(t, args...)
	if code := p.wait(30 * time.Second); code != 0 {
		t.Fatalf("vatcar %s: exit status %d\n%s", strings.Join(args, " "), code, p.stderr.String())
	}
	return p.stderr.String()
}

// httpGet returns the status code and body of GET http://url; 0 on error.
func httpGet(url string) (int, string) {
	resp, err := http.Get("http://" + url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var sb strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return resp.StatusCode, sb.String()
}
