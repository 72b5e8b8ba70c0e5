package sidecar

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/vatcar/vatcar/vat"
)

// revocationPair is testPair with the exporter reading a revocation list.
func revocationPair(t *testing.T, list string) *testPair {
	t.Helper()
	backend := startTestBackend(t)
	dir := t.TempDir()
	p := &testPair{capDir: dir}
	p.exporter = startTestSidecar(t, Config{
		Listen: "tcp:127.0.0.1:0", SecretKeyFile: filepath.Join(dir, "k.pem"), CapDir: dir,
		Exports: []Export{{Name: "test", Target: backend}}, Revocations: list,
	})
	uri, err := p.exporter.vat.SturdyURI(p.exporter.vat.DeriveID("test"))
	if err != nil {
		t.Fatal(err)
	}
	p.importer = startTestSidecar(t, Config{Imports: []Import{{Name: "test", URI: uri}}})
	p.client = testgrpc.NewTestServiceClient(dialAdmin(t, p.importer.Addresses().Imports["test"]))
	return p
}

// waitNotFound polls calls through client until one fails with NOT_FOUND and
// returns how long that took. Calls may pass (while the revocation is on its
// way) or fail with UNAVAILABLE (an importer reconnecting) in between; any
// other failure fails the test.
func waitNotFound(t *testing.T, client testgrpc.TestServiceClient, within time.Duration) time.Duration {
	return pollNotFound(t, client, within, true)
}

// expectNotFound is waitNotFound for a ref already revoked: no call may
// pass.
func expectNotFound(t *testing.T, client testgrpc.TestServiceClient) {
	t.Helper()
	pollNotFound(t, client, 10*time.Second, false)
}

func pollNotFound(t *testing.T, client testgrpc.TestServiceClient, within time.Duration, mayPass bool) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := client.EmptyCall(ctx, &testgrpc.Empty{})
		cancel()
		switch status.Code(err) {
		case codes.NotFound:
			return time.Since(start)
		case codes.Unavailable:
		case codes.OK:
			if !mayPass {
				t.Fatal("a call on the revoked ref passed")
			}
		default:
			t.Fatalf("call: %v, want OK until NOT_FOUND", err)
		}
		if time.Since(start) > within {
			t.Fatalf("calls still pass %v after the revocation", within)
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
}

func mustCall(t *testing.T, client testgrpc.TestServiceClient) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := client.EmptyCall(ctx, &testgrpc.Empty{}); err != nil {
		t.Fatalf("call: %v, want OK", err)
	}
}

func exportRevoked(s *Sidecar, name string) bool {
	for _, e := range s.ListExports() {
		if e.Name == name {
			return e.Revoked
		}
	}
	return false
}

// TestRevocationListRevokesExport: an entry written into the list breaks
// a live stream and refuses new restores with NOT_FOUND; lines that are
// not entries change nothing; the revocation holds when the export is
// removed and added again, when a config reload adds an export of the same
// name, and when the file is emptied or removed.
func TestRevocationListRevokesExport(t *testing.T) {
	list := filepath.Join(t.TempDir(), "revocations")
	p := revocationPair(t, list)
	reads := p.exporter.revs.metrics.reads
	if got := metricValue(t, reads.WithLabelValues("missing")); got != 1 {
		t.Errorf("reads{missing} = %v, want 1 (no file at start)", got)
	}
	mustCall(t, p.client)

	// Lines that are not entries: counted, nothing revoked.
	writeList(t, list, "# nothing yet\nnot-an-entry\ncapnp://sha-256:AAAA@h:1/x\n")
	p.exporter.readRevocations(false)
	if got := metricValue(t, p.exporter.revs.metrics.invalid); got != 2 {
		t.Errorf("invalid lines = %v, want 2", got)
	}
	mustCall(t, p.client)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := p.client.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&testgrpc.StreamingOutputCallRequest{ResponseParameters: []*testgrpc.ResponseParameters{{Size: 1}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}

	uri := p.exporter.ListExports()[0].URI
	writeList(t, list, "# nothing yet\nnot-an-entry\ncapnp://sha-256:AAAA@h:1/x\n"+uri+" # leaked\n")
	took := waitNotFound(t, p.client, 5*time.Second) // the poll, not a direct read
	t.Logf("revoked %v after the write", took)
	if _, err := stream.Recv(); status.Code(err) != codes.NotFound {
		t.Errorf("stream across the revocation: %v, want NOT_FOUND", err)
	}
	if !exportRevoked(p.exporter, "test") {
		t.Error("export not listed as revoked")
	}
	if _, err := os.Stat(filepath.Join(p.capDir, "test.cap")); !os.IsNotExist(err) {
		t.Errorf("cap file of the revoked export: %v, want none", err)
	}

	// Added again through the admin API: still revoked.
	target := p.exporter.cfg.Exports[0].Target
	if err := p.exporter.RemoveExport("test"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.exporter.AddExport(ctx, Export{Name: "test", Target: target}); err != nil {
		t.Fatal(err)
	}
	if !exportRevoked(p.exporter, "test") {
		t.Error("export added again: not revoked")
	}
	expectNotFound(t, p.client)

	// Emptied (a half-written file), then gone: still revoked.
	writeList(t, list, "")
	p.exporter.readRevocations(false)
	if err := os.Remove(list); err != nil {
		t.Fatal(err)
	}
	p.exporter.readRevocations(false)
	// Removed and added by a config reload: still revoked.
	if err := p.exporter.RemoveExport("test"); err != nil {
		t.Fatal(err)
	}
	if err := p.exporter.Reload(p.exporter.cfg); err != nil {
		t.Fatal(err)
	}
	if !exportRevoked(p.exporter, "test") {
		t.Error("export added by a reload: not revoked")
	}
	expectNotFound(t, p.client)
	if _, err := os.Stat(filepath.Join(p.capDir, "test.cap")); !os.IsNotExist(err) {
		t.Errorf("cap file of the export added revoked: %v, want none", err)
	}
}

// TestRevocationListAtStart: a ref listed before the sidecar starts is
// never served, and other exports are.
func TestRevocationListAtStart(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "k.pem")
	k, err := vat.LoadOrCreateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	list := filepath.Join(dir, "revocations")
	writeList(t, list, string(k.DeriveID("test").RevocationID())+"\n")
	backend := startTestBackend(t)
	s := startTestSidecar(t, Config{
		Listen: "tcp:127.0.0.1:0", SecretKeyFile: key, CapDir: dir, Revocations: list,
		Exports: []Export{{Name: "test", Target: backend}, {Name: "other", Target: backend}},
	})
	if !exportRevoked(s, "test") || exportRevoked(s, "other") {
		t.Errorf("exports = %+v, want test revoked and other not", s.ListExports())
	}
	if _, err := os.Stat(filepath.Join(dir, "test.cap")); !os.IsNotExist(err) {
		t.Errorf("cap file of the revoked export: %v, want none", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.table.Restore(ctx, s.vat.DeriveID("test")); err != vat.ErrUnknownService {
		t.Errorf("restore of the listed ref: %v, want %v", err, vat.ErrUnknownService)
	}
	c, err := s.table.Restore(ctx, s.vat.DeriveID("other"))
	if err != nil {
		t.Errorf("restore of the other ref: %v", err)
	}
	c.Release()
}

// TestRereadRevocationsForced: a change the poll cannot see (same size and
// modification time) is read by RereadRevocations, the SIGHUP path.
func TestRereadRevocationsForced(t *testing.T) {
	list := filepath.Join(t.TempDir(), "revocations")
	p := revocationPair(t, list)
	mustCall(t, p.client)
	other := vat.ServiceID("other").RevocationID()
	mine := p.exporter.vat.DeriveID("test").RevocationID()
	writeList(t, list, string(other)+"\n")
	p.exporter.readRevocations(false)
	fi, err := os.Stat(list)
	if err != nil {
		t.Fatal(err)
	}
	// Same length and time, swapped in by a rename: the running poll never
	// sees a file that differs from the old one in what it compares.
	tmp := list + ".new"
	writeList(t, tmp, string(mine)+"\n")
	if err := os.Chtimes(tmp, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, list); err != nil {
		t.Fatal(err)
	}
	p.exporter.readRevocations(false)
	if p.exporter.IsRevoked(mine) {
		t.Fatal("the poll saw a change of neither path, size nor time; the test cannot tell SIGHUP's read")
	}
	p.exporter.RereadRevocations()
	if !p.exporter.IsRevoked(mine) || !p.exporter.IsRevoked(other) {
		t.Error("RereadRevocations did not read the changed file")
	}
	expectNotFound(t, p.client)
}

// TestRevokeAppendsToList: Revoke appends the export's revocation id and a
// comment to a writable list; the entry holds when the export is added
// again. Without a writable list the revocation is local and says why.
func TestRevokeAppendsToList(t *testing.T) {
	dir := t.TempDir()
	list := filepath.Join(dir, "revocations")
	writeList(t, list, "# revoked refs") // no final newline
	if err := os.Chmod(list, 0o640); err != nil {
		t.Fatal(err)
	}
	p := revocationPair(t, list)
	mustCall(t, p.client)
	res, err := p.exporter.Revoke("test")
	if err != nil {
		t.Fatal(err)
	}
	want := p.exporter.vat.DeriveID("test").RevocationID()
	if res.RevocationID != want || res.List != list || res.LocalReason != "" {
		t.Errorf("Revoke = %+v, want id %s appended to %s", res, want, list)
	}
	b, err := os.ReadFile(list)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) != 3 || lines[0] != "# revoked refs" || !strings.HasPrefix(lines[1], string(want)+" # export test, 20") || lines[2] != "" {
		t.Errorf("list after Revoke = %q, want the old line, then the id with a comment", b)
	}
	if fi, err := os.Stat(list); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("list mode after Revoke = %v, %v; want 0640 kept", fi.Mode(), err)
	}
	if !p.exporter.IsRevoked(want) {
		t.Error("appended entry not in force at once")
	}
	expectNotFound(t, p.client)
	target := p.exporter.cfg.Exports[0].Target
	if err := p.exporter.RemoveExport("test"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.exporter.AddExport(context.Background(), Export{Name: "test", Target: target}); err != nil {
		t.Fatal(err)
	}
	if !exportRevoked(p.exporter, "test") {
		t.Error("export added again after a listed Revoke: not revoked")
	}

	for _, tc := range []struct {
		name, list, reason string
	}{
		{"no list", "", "no revocation list"},
		{"list not writable", dir, "is a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := revocationPair(t, tc.list)
			res, err := p.exporter.Revoke("test")
			if err != nil {
				t.Fatal(err)
			}
			if res.List != "" || !strings.Contains(res.LocalReason, tc.reason) || res.RevocationID != p.exporter.vat.DeriveID("test").RevocationID() {
				t.Errorf("Revoke = %+v, want local, reason naming %q", res, tc.reason)
			}
			expectNotFound(t, p.client)
		})
	}
}

func writeList(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// metricValue reads a gauge's or counter's value.
func metricValue(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	if d.Gauge != nil {
		return d.GetGauge().GetValue()
	}
	return d.GetCounter().GetValue()
}

// TestRevocationListReadDuringAddExport: a list read that runs after
// addExport checked the list and before the export entered the restorer
// (where the read cannot revoke it yet) still leaves it revoked and out of
// the restorer.
func TestRevocationListReadDuringAddExport(t *testing.T) {
	dir := t.TempDir()
	list := filepath.Join(dir, "revocations")
	backend := startTestBackend(t)
	s := startTestSidecar(t, Config{Listen: "tcp:127.0.0.1:0", SecretKeyFile: filepath.Join(dir, "k.pem"), Revocations: list, CapDir: dir})
	s.testHookListChecked = func() {
		writeList(t, list, string(s.vat.DeriveID("late").RevocationID())+"\n")
		s.RereadRevocations()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.AddExport(ctx, Export{Name: "late", Target: backend}); err != nil {
		t.Fatal(err)
	}
	if !s.IsRevoked(s.vat.DeriveID("late").RevocationID()) {
		t.Fatal("the hook's read did not happen")
	}
	if !exportRevoked(s, "late") {
		t.Error("export not revoked")
	}
	if c, err := s.table.Restore(ctx, s.vat.DeriveID("late")); err != vat.ErrUnknownService {
		c.Release()
		t.Errorf("restore of the listed export: %v, want %v", err, vat.ErrUnknownService)
	}
	if _, err := os.Stat(filepath.Join(dir, "late.cap")); !os.IsNotExist(err) {
		t.Errorf("cap file of the revoked export: %v, want none", err)
	}
}

// TestRevocationListRacesWithAddExport adds exports while the list that
// names them is read: whichever runs first, every export ends up revoked
// and out of the restorer.
func TestRevocationListRacesWithAddExport(t *testing.T) {
	dir := t.TempDir()
	list := filepath.Join(dir, "revocations")
	backend := startTestBackend(t)
	s := startTestSidecar(t, Config{Listen: "tcp:127.0.0.1:0", SecretKeyFile: filepath.Join(dir, "k.pem"), Revocations: list})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var content strings.Builder
	for i := range 20 {
		name := fmt.Sprintf("e%d", i)
		content.WriteString(string(s.vat.DeriveID(name).RevocationID()) + "\n")
		writeList(t, list, content.String())
		var wg sync.WaitGroup
		wg.Go(func() {
			if _, err := s.AddExport(ctx, Export{Name: name, Target: backend}); err != nil {
				t.Error(err)
			}
		})
		wg.Go(func() { s.RereadRevocations() })
		wg.Wait()
		if !exportRevoked(s, name) {
			t.Errorf("export %s not revoked", name)
		}
		if c, err := s.table.Restore(ctx, s.vat.DeriveID(name)); err != vat.ErrUnknownService {
			c.Release()
			t.Errorf("restore of listed export %s: %v, want %v", name, err, vat.ErrUnknownService)
		}
	}
}

// TestRevocationsReadLogsOnce reads a list through its versions: a missing
// file warns once; a bad line warns once while it stays, without the URI's
// service id (which only debug shows); a touched but unchanged file is not
// applied again; every version's ids add up.
func TestRevocationsReadLogsOnce(t *testing.T) {
	var logs strings.Builder
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	list := filepath.Join(t.TempDir(), "revocations")
	r := newRevocations(list, prometheus.NewRegistry(), log)
	count := func(level, msg string) int {
		n := 0
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, "level="+level) && strings.Contains(l, msg) {
				n++
			}
		}
		return n
	}
	for range 2 {
		if added := r.read(false); len(added) != 0 {
			t.Fatalf("missing file added %v", added)
		}
	}
	if n := count("WARN", "revocation list file missing"); n != 1 {
		t.Errorf("%d warnings for the missing file, want 1", n)
	}

	const secret = "U2VjcmV0U2VydmljZUlkMTIzNDU2Nzg5MA"
	bad := "capnp://sha-256:" + leakedDigest + "@localhost/" + secret // no port
	a, b := vat.ServiceID("a").RevocationID(), vat.ServiceID("b").RevocationID()
	writeList(t, list, bad+"\n"+string(a)+"\n")
	if added := r.read(false); len(added) != 1 || added[0] != a {
		t.Errorf("first version added %v, want [%s]", added, a)
	}
	writeList(t, list, "# a comment now\n"+bad+"\n"+string(a)+"\n"+string(b)+"\n")
	if added := r.read(false); len(added) != 1 || added[0] != b {
		t.Errorf("second version added %v, want [%s]", added, b)
	}
	if n := count("WARN", "not an entry"); n != 1 {
		t.Errorf("bad line warned %d times over two versions, want once", n)
	}
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, secret) && !strings.Contains(l, "level=DEBUG") {
			t.Errorf("the service id logged above debug: %s", l)
		}
	}
	if n := count("DEBUG", secret); n != 1 {
		t.Errorf("the bad line at debug %d times, want 1", n)
	}

	// Touched, not changed: not read again; forced: read, nothing new.
	reads := metricValue(t, r.metrics.reads.WithLabelValues("ok"))
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(list, later, later); err != nil {
		t.Fatal(err)
	}
	r.read(false)
	if got := metricValue(t, r.metrics.reads.WithLabelValues("ok")); got != reads {
		t.Errorf("a touch counted as %v reads, want none", got-reads)
	}
	if added := r.read(true); len(added) != 0 {
		t.Errorf("forced read of the same list added %v", added)
	}
	if got := metricValue(t, r.metrics.inForce); got != 2 {
		t.Errorf("ids in force = %v, want 2", got)
	}
}

// TestRevocationsReadConfigMapSwap updates the list the way the kubelet
// updates a ConfigMap volume: the new content in a new directory, then the
// ..data symlink swapped by a rename. The poll sees it by the resolved path
// even when size and modification time are the same.
func TestRevocationsReadConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	a, b := vat.ServiceID("a").RevocationID(), vat.ServiceID("b").RevocationID()
	version := func(name string, id vat.RevocationID, mtime time.Time) {
		t.Helper()
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(dir, name, "revocations")
		writeList(t, file, string(id)+"\n")
		if err := os.Chtimes(file, mtime, mtime); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(name, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	mtime := time.Now().Add(-time.Hour)
	version("..2026_12_06_01_00_00.1", a, mtime)
	if err := os.Symlink(filepath.Join("..data", "revocations"), filepath.Join(dir, "revocations")); err != nil {
		t.Fatal(err)
	}
	r := newRevocations(filepath.Join(dir, "revocations"), prometheus.NewRegistry(), nil)
	if added := r.read(false); len(added) != 1 || added[0] != a {
		t.Fatalf("first version added %v, want [%s]", added, a)
	}
	version("..2026_12_06_01_01_00.2", b, mtime)
	if added := r.read(false); len(added) != 1 || added[0] != b {
		t.Errorf("after the swap the poll added %v, want [%s]", added, b)
	}
}
