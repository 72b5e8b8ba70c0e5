package main_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
)

// binary is the vatcar command and sidecarBinary its sidecar image's build
// (-tags nok8s, no Kubernetes packages), built once by TestMain (without
// -race, for speed: the processes under test are black boxes).
var binary, sidecarBinary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "vatcar-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "vatcar")
	sidecarBinary = filepath.Join(dir, "vatcar-sidecar")
	for _, args := range [][]string{{"-o", binary}, {"-tags", "nok8s", "-o", sidecarBinary}} {
		build := exec.Command("go", append(append([]string{"build"}, args...), ".")...)
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "go build", strings.Join(args, " "), err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		os.RemoveAll(dir)
		os.Exit(code)
	}))
}

// syncBuffer is a bytes.Buffer safe for one writer and many readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// addresses is the --ready-file of a sidecar (sidecar.Addresses).
type addresses struct {
	Vat     string            `json:"vat"`
	Listen  string            `json:"listen"`
	Admin   string            `json:"admin"`
	Health  string            `json:"health"`
	GRPC    string            `json:"grpc"`
	Imports map[string]string `json:"imports"`
}

// proc is a running vatcar process.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan struct{}
	err    error // of Wait, once done is closed
	ready  string
}

// start runs `vatcar args...` and returns at once.
func start(t *testing.T, args ...string) *proc {
	t.Helper()
	return startEnv(t, nil, args...)
}

// startEnv is start with env added to the process's environment.
func startEnv(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	return startBinary(t, binary, env, args...)
}

// startBinary is startEnv running bin instead of binary.
func startBinary(t *testing.T, bin string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, stderr: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout = p.stderr
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("vatcar %s output:\n%s", strings.Join(args, " "), p.stderr.String())
		}
	})
	return p
}

// startSidecar runs `vatcar run args...` with a ready file and an admin port
// of its own, and waits until it is ready.
func startSidecar(t *testing.T, args ...string) (*proc, addresses) {
	t.Helper()
	return startSidecarEnv(t, nil, args...)
}

// startSidecarEnv is startSidecar with env added to the environment.
func startSidecarEnv(t *testing.T, env []string, args ...string) (*proc, addresses) {
	t.Helper()
	return startSidecarBinary(t, binary, env, args...)
}

// startSidecarBinary is startSidecarEnv running bin instead of binary.
func startSidecarBinary(t *testing.T, bin string, env []string, args ...string) (*proc, addresses) {
	t.Helper()
	ready := filepath.Join(t.TempDir(), "ready.json")
	base := []string{"run", "--ready-file", ready, "--admin-listen", "127.0.0.1:0"}
	if !containsFlag(args, "--log-level") {
		base = append(base, "--log-level", "debug")
	}
	args = append(base, args...)
	p := startBinary(t, bin, env, args...)
	p.ready = ready
	return p, p.waitReady()
}

func containsFlag(args []string, flag string) bool {
	for _, a := range args {
		if a == flag {
			return true
		}
	}
	return false
}

// waitReady polls for the ready file.
func (p *proc) waitReady() addresses {
	p.t.Helper()
	var a addresses
	waitFor(p.t, 20*time.Second, "sidecar ready", func() bool {
		select {
		case <-p.done:
			p.t.Fatalf("vatcar exited before ready: %v\n%s", p.err, p.stderr.String())
		default:
		}
		b, err := os.ReadFile(p.ready)
		return err == nil && json.Unmarshal(b, &a) == nil
	})
	return a
}

// signal sends sig to the process.
func (p *proc) signal(sig os.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
}

// wait waits for the process to exit and returns its exit status.
func (p *proc) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.t.Fatalf("vatcar did not exit within %v\n%s", timeout, p.stderr.String())
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		p.t.Fatal(p.err)
	}
	return 0
}

// stop sends SIGTERM and waits for exit status 0.
func (p *proc) stop() {
	p.t.Helper()
	p.signal(syscall.SIGTERM)
	if code := p.wait(30 * time.Second); code != 0 {
		p.t.Fatalf("exit status after SIGTERM = %d, want 0\n%s", code, p.stderr.String())
	}
}

// waitFor polls cond every 10ms until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not a wait for a condition
	}
}

// startBackend serves the grpc-go interop TestService on a loopback port.
func startBackend(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveBackend(t, ln)
	return ln.Addr().String()
}

// serveBackend serves the grpc-go interop TestService on ln until the test
// ends.
func serveBackend(t *testing.T, ln net.Listener) {
	srv := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(srv, interop.NewTestServer())
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
}

// dial makes a plaintext gRPC client to addr.
func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// pair is an exporting and an importing sidecar in front of a backend.
type pair struct {
	exporter, importer *proc
	exp, imp           addresses
	capFile, keyFile   string
	exportArgs         []string
	client             testgrpc.TestServiceClient
	cc                 *grpc.ClientConn
}

// startPair starts a backend, a sidecar exporting it as "test" and a sidecar
// importing its cap file as "test"; the client talks to the import.
func startPair(t *testing.T, exporterArgs ...string) *pair {
	t.Helper()
	return startPairArgs(t, nil, exporterArgs...)
}

// startPairArgs is startPair with extra arguments for the importer too.
func startPairArgs(t *testing.T, importerArgs []string, exporterArgs ...string) *pair {
	t.Helper()
	backend := startBackend(t)
	dir := t.TempDir()
	p := &pair{capFile: filepath.Join(dir, "test.cap"), keyFile: filepath.Join(dir, "exporter.pem")}
	p.exportArgs = append([]string{"--listen", "tcp:127.0.0.1:0", "--secret-key-file", p.keyFile,
		"--export", "test=" + backend, "--cap-dir", dir}, exporterArgs...)
	p.exporter, p.exp = startSidecar(t, p.exportArgs...)
	p.importer, p.imp = startSidecar(t, append([]string{"--import", "test=@" + p.capFile}, importerArgs...)...)
	p.cc = dial(t, p.imp.Imports["test"])
	p.client = testgrpc.NewTestServiceClient(p.cc)
	return p
}

// scrape returns the value of the metric line that matches name and every
// label given (name{a="b",...} value); 0 when absent.
func scrape(t *testing.T, admin, name string, labels map[string]string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	total := 0.0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	line := regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$`)
	for sc.Scan() {
		m := line.FindStringSubmatch(sc.Text())
		if m == nil || m[1] != name {
			continue
		}
		ok := true
		for k, v := range labels {
			if !strings.Contains(m[3], k+`="`+v+`"`) {
				ok = false
			}
		}
		if ok {
			v, err := strconv.ParseFloat(m[4], 64)
			if err != nil {
				t.Fatal(err)
			}
			total += v
		}
	}
	return total
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
