package main_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

// TestExporterRestartDuringTraffic kills the exporting sidecar while a
// client keeps calling through the importer (and has a stream open): the
// stream and the calls fail fast with UNAVAILABLE (never hang to their
// deadline), and once the exporter is back (same key, same address) calls
// succeed again without operator action.
func TestExporterRestartDuringTraffic(t *testing.T) {
	p := startPair(t)
	call := func() (time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		start := time.Now()
		_, err := p.client.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: 10})
		return time.Since(start), err
	}
	if _, err := call(); err != nil {
		t.Fatalf("call before restart: %v", err)
	}

	// Traffic in the background for the whole test.
	var ok, failed, slow atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			d, err := call()
			switch {
			case err == nil:
				ok.Add(1)
			case status.Code(err) == codes.DeadlineExceeded || d > 2*time.Second:
				slow.Add(1)
			default:
				failed.Add(1)
			}
		}
	})
	defer func() { close(stop); wg.Wait() }()
	stream, err := p.client.FullDuplexCall(ctxTimeout(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	pingPong(t, stream, 1)

	p.exporter.signal(syscall.SIGKILL)
	p.exporter.wait(10 * time.Second)
	// A stream open on the dead peer ends with UNAVAILABLE, not at its deadline.
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("stream open when the exporter died: %v, want UNAVAILABLE", err)
	}
	var downErr error
	waitFor(t, 10*time.Second, "a call to fail while the exporter is down", func() bool {
		d, err := call()
		if err != nil && d < time.Second {
			downErr = err
			return true
		}
		return false
	})
	if got := status.Code(downErr); got != codes.Unavailable {
		t.Errorf("call while exporter is down: %v, want UNAVAILABLE", downErr)
	}
	// Fail fast: a few more calls while down, each well under its deadline.
	for range 3 {
		d, err := call()
		if err == nil {
			t.Fatal("call succeeded while the exporter is down")
		}
		if d > time.Second {
			t.Errorf("call while exporter is down took %v (%v), want it to fail fast", d, err)
		}
	}

	// Restart on the same address with the same key: same URI.
	args := append([]string{}, p.exportArgs...)
	args[1] = p.exp.Listen
	p.exporter, _ = startSidecar(t, args...)
	before := ok.Load()
	waitFor(t, 15*time.Second, "calls to succeed after the restart", func() bool {
		_, err := call()
		return err == nil && ok.Load() > before
	})
	if n := slow.Load(); n > 0 {
		t.Errorf("%d calls hung to their deadline instead of failing fast", n)
	}
	t.Logf("background calls: %d ok, %d failed fast, %d slow", ok.Load(), failed.Load(), slow.Load())
}

// TestSIGTERMLetsStreamsFinish opens bidi streams through the pair, sends
// SIGTERM to one sidecar, and checks the streams in flight still complete
// and the process exits 0; new calls are refused meanwhile.
func TestSIGTERMLetsStreamsFinish(t *testing.T) {
	for _, side := range []string{"importer", "exporter"} {
		t.Run(side, func(t *testing.T) {
			p := startPair(t)
			target := p.importer
			if side == "exporter" {
				target = p.exporter
			}
			ctx := ctxTimeout(t, 30*time.Second)
			const streams = 3
			var list []testpb.TestService_FullDuplexCallClient
			for range streams {
				s, err := p.client.FullDuplexCall(ctx)
				if err != nil {
					t.Fatal(err)
				}
				pingPong(t, s, 1)
				list = append(list, s)
			}
			target.signal(syscall.SIGTERM)
			// Wait until the sidecar drains (not ready) before going on.
			waitFor(t, 10*time.Second, "the sidecar to report not ready", func() bool {
				return !isReady(target)
			})
			for i, s := range list {
				for round := 2; round <= 4; round++ {
					pingPong(t, s, round)
				}
				if err := s.CloseSend(); err != nil {
					t.Fatalf("stream %d CloseSend: %v", i, err)
				}
				if _, err := s.Recv(); !errors.Is(err, io.EOF) {
					t.Fatalf("stream %d ended with %v, want io.EOF (status OK)", i, err)
				}
			}
			if code := target.wait(20 * time.Second); code != 0 {
				t.Errorf("exit status = %d, want 0", code)
			}
		})
	}
}

// isReady reports whether p's ready file exists and its /readyz says 200.
func isReady(p *proc) bool {
	b, err := os.ReadFile(p.ready)
	var a addresses
	if err != nil || json.Unmarshal(b, &a) != nil {
		return false
	}
	code, _ := httpGet(a.Admin + "/readyz")
	return code == 200
}

// pingPong sends one message of size n and expects one response of size n.
func pingPong(t *testing.T, s testpb.TestService_FullDuplexCallClient, n int) {
	t.Helper()
	err := s.Send(&testpb.StreamingOutputCallRequest{
		ResponseParameters: []*testpb.ResponseParameters{{Size: int32(n)}},
		Payload:            &testpb.Payload{Body: make([]byte, n)},
	})
	if err != nil {
		t.Fatalf("Send %d: %v", n, err)
	}
	resp, err := s.Recv()
	if err != nil {
		t.Fatalf("Recv %d: %v", n, err)
	}
	if got := len(resp.GetPayload().GetBody()); got != n {
		t.Fatalf("response size %d, want %d", got, n)
	}
}

// TestSIGHUPReloadsExports changes the config file's exports and sends
// SIGHUP: the new export gets its cap file and works, the removed one's goes,
// and a stream open on the unchanged one is not disturbed.
func TestSIGHUPReloadsExports(t *testing.T) {
	backend := startBackend(t)
	dir := t.TempDir()
	config := filepath.Join(dir, "vatcar.yaml")
	write := func(names ...string) {
		s := "listen: tcp:127.0.0.1:0\nsecretKeyFile: " + filepath.Join(dir, "k.pem") + "\ncapDir: " + dir + "\nexports:\n"
		for _, n := range names {
			s += "- name: " + n + "\n  target: " + backend + "\n"
		}
		if err := os.WriteFile(config, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("keep", "old")
	exporter, _ := startSidecar(t, "--config", config)
	_, imp := startSidecar(t, "--import", "keep=@"+filepath.Join(dir, "keep.cap"))
	client := testpb.NewTestServiceClient(dial(t, imp.Imports["keep"]))
	ctx := ctxTimeout(t, 30*time.Second)
	stream, err := client.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pingPong(t, stream, 1)

	write("keep", "new")
	exporter.signal(syscall.SIGHUP)
	waitFor(t, 10*time.Second, "new.cap after SIGHUP", func() bool {
		_, err := os.Stat(filepath.Join(dir, "new.cap"))
		return err == nil
	})
	waitFor(t, 10*time.Second, "old.cap to go after SIGHUP", func() bool {
		_, err := os.Stat(filepath.Join(dir, "old.cap"))
		return errors.Is(err, os.ErrNotExist)
	})
	pingPong(t, stream, 2) // the unchanged export's stream goes on
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("stream on unchanged export ended with %v, want io.EOF", err)
	}
	_, newImp := startSidecar(t, "--import", "new=@"+filepath.Join(dir, "new.cap"))
	if _, err := testpb.NewTestServiceClient(dial(t, newImp.Imports["new"])).EmptyCall(ctx, &testpb.Empty{}); err != nil {
		t.Errorf("call on the export added by reload: %v", err)
	}
	exporter.stop()
}

// TestDrainTimeoutCutsOffStreams holds a stream open past --drain-timeout
// after SIGTERM: the sidecar still exits 0, and the stream fails.
func TestDrainTimeoutCutsOffStreams(t *testing.T) {
	p := startPairArgs(t, []string{"--drain-timeout", "300ms"})
	ctx := ctxTimeout(t, 30*time.Second)
	s, err := p.client.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pingPong(t, s, 1)
	p.importer.signal(syscall.SIGTERM)
	if code := p.importer.wait(20 * time.Second); code != 0 {
		t.Errorf("exit status = %d, want 0", code)
	}
	if _, err := s.Recv(); err == nil || errors.Is(err, io.EOF) {
		t.Errorf("stream held past the drain timeout ended with %v, want an error", err)
	}
	if out := p.importer.stderr.String(); !strings.Contains(out, "drain timeout") {
		t.Errorf("the cut-off is not logged:\n%s", out)
	}
}

// TestTwoSidecarsOnDefaultsDoNotCollide starts two sidecars with the
// default admin socket and health port on one host: the second takes a
// socket and a port of its own instead of failing, and each answers on
// what its ready file names.
func TestTwoSidecarsOnDefaultsDoNotCollide(t *testing.T) {
	env := []string{"XDG_RUNTIME_DIR=" + t.TempDir()}
	var got []addresses
	for i := range 2 {
		ready := filepath.Join(t.TempDir(), "ready.json")
		p := startEnv(t, env, "run", "--ready-file", ready, "--log-level", "info")
		p.ready = ready
		got = append(got, p.waitReady())
		if i == 1 && !strings.Contains(p.stderr.String(), "another sidecar") {
			t.Errorf("second sidecar does not say why it moved:\n%s", p.stderr.String())
		}
	}
	if got[0].Admin == got[1].Admin || got[0].Health == got[1].Health {
		t.Fatalf("admin %s and %s, health %s and %s: want each its own", got[0].Admin, got[1].Admin, got[0].Health, got[1].Health)
	}
	for _, a := range got {
		if out := run(t, "ctl", "--admin", a.Admin, "dump"); !strings.Contains(out, a.Vat) {
			t.Errorf("ctl --admin %s dump does not show vat %s:\n%s", a.Admin, a.Vat, out)
		}
		if code, _ := httpGet(a.Health + "/healthz"); code != 200 {
			t.Errorf("GET %s/healthz: %d, want 200", a.Health, code)
		}
	}
}
