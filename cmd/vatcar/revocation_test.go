package main_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

// replica is one exporting sidecar of a workload whose replicas share a key
// and a revocation list, and an importing sidecar that reaches it alone.
type replica struct {
	args     []string
	exporter *proc
	exp      addresses
	capDir   string
	client   testpb.TestServiceClient
}

// startReplica starts an exporter with args and an importer of its cap
// file.
func startReplica(t *testing.T, args []string, capDir string) *replica {
	t.Helper()
	r := &replica{args: args, capDir: capDir}
	r.exporter, r.exp = startSidecar(t, args...)
	_, imp := startSidecar(t, "--import", "test=@"+filepath.Join(capDir, "test.cap"))
	r.client = testpb.NewTestServiceClient(dial(t, imp.Imports["test"]))
	return r
}

// callCode makes one call through client and returns its status code.
func callCode(client testpb.TestServiceClient) codes.Code {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := client.EmptyCall(ctx, &testpb.Empty{})
	return status.Code(err)
}

// untilNotFound polls calls through client until one fails with NOT_FOUND
// and returns when that was. A call may pass (the revocation is on its way)
// only when mayPass; UNAVAILABLE (an importer reconnecting) is retried; any
// other code fails the test.
func untilNotFound(t *testing.T, client testpb.TestServiceClient, within time.Duration, mayPass bool) (time.Time, error) {
	deadline := time.Now().Add(within)
	for {
		switch code := callCode(client); code {
		case codes.NotFound:
			return time.Now(), nil
		case codes.Unavailable:
		case codes.OK:
			if !mayPass {
				return time.Time{}, fmt.Errorf("a call on the revoked ref passed")
			}
		default:
			return time.Time{}, fmt.Errorf("call failed with %v, want OK or NOT_FOUND", code)
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("no NOT_FOUND within %v", within)
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
}

func writeList(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestRevocationListAcrossReplicas: three exporting sidecars share one key
// and one --revocations file, each reached by its own importer. A leaked
// URI written into the file stops calls through every replica within 5 s;
// a replica restarted afterwards still refuses the ref; lines that are not
// entries change nothing, before or after.
func TestRevocationListAcrossReplicas(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "workload.pem")
	run(t, "keygen", "--secret-key-file", key)
	list := filepath.Join(dir, "revocations")
	writeList(t, list, "# revoked sturdy refs of the workload\n")
	backend := startBackend(t)
	var replicas []*replica
	for i := range 3 {
		capDir := filepath.Join(dir, fmt.Sprintf("caps%d", i))
		replicas = append(replicas, startReplica(t, []string{"--listen", "tcp:127.0.0.1:0", "--secret-key-file", key,
			"--export", "test=" + backend, "--cap-dir", capDir, "--revocations", list}, capDir))
	}
	for i, r := range replicas {
		if code := callCode(r.client); code != codes.OK {
			t.Fatalf("replica %d before the revocation: %v, want OK", i, code)
		}
	}
	// The ref as a user who leaked it would paste it: the URI of one replica.
	leaked := strings.TrimSpace(readFile(t, filepath.Join(replicas[0].capDir, "test.cap")))
	revID := strings.TrimSpace(run(t, "uri", "--revocation-id", "--secret-key-file", key, "test"))

	// A line that is not an entry: read, counted, nothing revoked.
	writeList(t, list, "# revoked sturdy refs of the workload\ncapnp://not-a-ref\n")
	for i, r := range replicas {
		waitFor(t, 10*time.Second, fmt.Sprintf("replica %d to count the bad line", i), func() bool {
			return scrape(t, r.exp.Admin, "vatcar_revocation_list_invalid_lines", nil) == 1
		})
		if code := callCode(r.client); code != codes.OK {
			t.Fatalf("replica %d after a bad line: %v, want OK", i, code)
		}
	}

	written := time.Now()
	writeList(t, list, "# revoked sturdy refs of the workload\ncapnp://not-a-ref\n"+leaked+"  # leaked in INC-7\n")
	latency := make([]time.Duration, len(replicas))
	errs := make([]error, len(replicas))
	var wg sync.WaitGroup
	for i, r := range replicas {
		wg.Go(func() {
			at, err := untilNotFound(t, r.client, 10*time.Second, true)
			latency[i], errs[i] = at.Sub(written), err
		})
	}
	wg.Wait()
	for i := range replicas {
		if errs[i] != nil {
			t.Fatalf("replica %d: %v", i, errs[i])
		}
		t.Logf("replica %d: first NOT_FOUND %v after the list was written", i, latency[i].Round(time.Millisecond))
		if latency[i] > 5*time.Second {
			t.Errorf("replica %d refused the ref %v after the write, want within 5s", i, latency[i])
		}
	}
	for i, r := range replicas {
		if got := scrape(t, r.exp.Admin, "vatcar_revocations", nil); got != 1 {
			t.Errorf("replica %d: vatcar_revocations = %v, want 1", i, got)
		}
	}

	// Another bad line: still refused everywhere.
	writeList(t, list, "# revoked sturdy refs of the workload\ncapnp://not-a-ref\n"+leaked+"  # leaked in INC-7\n"+revID[:12]+"\n")
	for i, r := range replicas {
		waitFor(t, 10*time.Second, fmt.Sprintf("replica %d to count two bad lines", i), func() bool {
			return scrape(t, r.exp.Admin, "vatcar_revocation_list_invalid_lines", nil) == 2
		})
		if _, err := untilNotFound(t, r.client, 10*time.Second, false); err != nil {
			t.Errorf("replica %d after a second bad line: %v", i, err)
		}
	}

	// Restart replica 1 on the same port: it reads the list before it
	// exports, so it refuses the ref from its first restore on.
	r := replicas[1]
	r.exporter.stop()
	port := r.exp.Listen[strings.LastIndex(r.exp.Listen, ":")+1:]
	args := append([]string(nil), r.args...)
	args[1] = "tcp:127.0.0.1:" + port
	r.exporter, r.exp = startSidecar(t, args...)
	if _, err := untilNotFound(t, r.client, 20*time.Second, false); err != nil {
		t.Errorf("restarted replica, its old importer: %v", err)
	}
	uri := strings.TrimSpace(run(t, "uri", "--secret-key-file", key, "--public-address", "tcp:127.0.0.1:"+port, "test"))
	_, fresh := startSidecar(t, "--import", "test="+uri)
	if _, err := untilNotFound(t, testpb.NewTestServiceClient(dial(t, fresh.Imports["test"])), 20*time.Second, false); err != nil {
		t.Errorf("restarted replica, a new importer: %v", err)
	}
	if ok, bad := scrape(t, r.exp.Admin, "vatcar_restores_total", map[string]string{"result": "ok"}),
		scrape(t, r.exp.Admin, "vatcar_restores_total", map[string]string{"result": "unknown"}); ok != 0 || bad == 0 {
		t.Errorf("restarted replica: restores ok %v, failed %v; want none served and some refused", ok, bad)
	}
	if _, err := os.Stat(filepath.Join(r.capDir, "test.cap")); !os.IsNotExist(err) {
		t.Errorf("restarted replica wrote the revoked ref's cap file: %v", err)
	}
}

// TestCtlRevokeAppendsToList: `vatcar ctl revoke` on one replica prints the
// revocation id, appends it to the writable list the replicas share, and
// the other replica refuses the ref too.
func TestCtlRevokeAppendsToList(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "workload.pem")
	run(t, "keygen", "--secret-key-file", key)
	list := filepath.Join(dir, "revocations")
	backend := startBackend(t)
	var replicas []*replica
	for i := range 2 {
		capDir := filepath.Join(dir, fmt.Sprintf("caps%d", i))
		replicas = append(replicas, startReplica(t, []string{"--listen", "tcp:127.0.0.1:0", "--secret-key-file", key,
			"--export", "test=" + backend, "--cap-dir", capDir, "--revocations", list}, capDir))
	}
	for i, r := range replicas {
		if code := callCode(r.client); code != codes.OK {
			t.Fatalf("replica %d before the revocation: %v, want OK", i, code)
		}
	}
	uri := strings.TrimSpace(readFile(t, filepath.Join(replicas[0].capDir, "test.cap")))
	revID := strings.TrimSpace(run(t, "uri", "--revocation-id", uri))
	if byName := strings.TrimSpace(run(t, "uri", "--revocation-id", "--secret-key-file", key, "test")); byName != revID || !strings.HasPrefix(revID, "rev1:") {
		t.Fatalf("uri --revocation-id: %q from the URI, %q from the key and name; want one rev1: id", revID, byName)
	}

	out := run(t, "ctl", "--admin", replicas[0].exp.Admin, "revoke", "test")
	if lines := strings.Split(out, "\n"); lines[0] != revID || !strings.Contains(out, "added to the revocation list "+list) {
		t.Errorf("ctl revoke printed %q, want the revocation id %s, then the list it was added to", out, revID)
	}
	if got := readFile(t, list); !strings.HasPrefix(got, revID+" # export test, ") || strings.Count(got, "\n") != 1 {
		t.Errorf("list after ctl revoke = %q, want one line: the id and a comment", got)
	}
	for i, r := range replicas {
		if _, err := untilNotFound(t, r.client, 5*time.Second, i > 0); err != nil {
			t.Errorf("replica %d: %v", i, err)
		}
	}
}

// TestRevocationListSIGHUP: SIGHUP reads the list even when the poll sees
// no change (same size and modification time, rewritten in place).
func TestRevocationListSIGHUP(t *testing.T) {
	list := filepath.Join(t.TempDir(), "revocations")
	other := "rev1:AAAAAAAAAAAAAAAAAAAAAA"
	writeList(t, list, other+"\n")
	p := startPair(t, "--revocations", list)
	if code := callCode(p.client); code != codes.OK {
		t.Fatalf("before: %v, want OK", code)
	}
	revID := strings.TrimSpace(run(t, "uri", "--revocation-id", "@"+p.capFile))
	if len(revID) != len(other) {
		t.Fatalf("revocation id %q: want the length of %q", revID, other)
	}
	fi, err := os.Stat(list)
	if err != nil {
		t.Fatal(err)
	}
	// Same length and time, swapped in by a rename: the sidecar's poll
	// never sees a file that differs from the old one in what it compares.
	tmp := list + ".new"
	writeList(t, tmp, revID+"\n")
	if err := os.Chtimes(tmp, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, list); err != nil {
		t.Fatal(err)
	}
	p.exporter.signal(syscall.SIGHUP)
	if _, err := untilNotFound(t, p.client, 5*time.Second, true); err != nil {
		t.Error(err)
	}
}

// TestRevocationListThroughBalancedImport: three replicas sharing a key and
// a list behind one name (127.0.0.2-4, a hosts file), one importer that
// spreads its calls over them. Once the leaked URI is in the list, every
// replica has applied it within 5 s and no call reaches any backend; a
// replica restarted afterwards refuses the importer's restores and still
// serves nothing.
func TestRevocationListThroughBalancedImport(t *testing.T) {
	list := filepath.Join(t.TempDir(), "revocations")
	writeList(t, list, "# revoked refs of replicas.test\n")
	rs := startReplicas(t, "--revocations", list)
	var admins []string
	for _, p := range rs.procs {
		admins = append(admins, p.waitReady().Admin)
	}
	_, imp := startSidecar(t, "--hosts-file", rs.hostFile, "--import", "test=@"+rs.capFile)
	client := testpb.NewTestServiceClient(dial(t, imp.Imports["test"]))
	waitFor(t, 30*time.Second, "every replica to serve calls", func() bool {
		if code := callCode(client); code != codes.OK && code != codes.Unavailable {
			t.Fatalf("call before the revocation: %v", code)
		}
		return rs.served[0].Load() > 0 && rs.served[1].Load() > 0 && rs.served[2].Load() > 0
	})

	written := time.Now()
	writeList(t, list, "# revoked refs of replicas.test\n"+strings.TrimSpace(readFile(t, rs.capFile))+"\n")
	applied := make([]time.Duration, len(admins))
	waitFor(t, 10*time.Second, "every replica to apply the list", func() bool {
		done := true
		for i, a := range admins {
			if applied[i] == 0 && scrape(t, a, "vatcar_revocations", nil) == 1 {
				applied[i] = time.Since(written)
			}
			done = done && applied[i] > 0
		}
		return done
	})
	firstNotFound, err := untilNotFound(t, client, 10*time.Second, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("replicas applied the list %v after the write (their metric); first NOT_FOUND through the balanced import after %v",
		applied, firstNotFound.Sub(written).Round(time.Millisecond))
	for i, d := range applied {
		if d > 5*time.Second {
			t.Errorf("replica %d applied the list %v after the write, want within 5s", i, d)
		}
	}
	refusedEverywhere := func(when string) {
		t.Helper()
		served := []int64{rs.served[0].Load(), rs.served[1].Load(), rs.served[2].Load()}
		for range 30 {
			if code := callCode(client); code != codes.NotFound {
				t.Fatalf("%s: call %v, want NOT_FOUND", when, code)
			}
		}
		for i, n := range rs.served {
			if n.Load() != served[i] {
				t.Errorf("%s: replica %d's backend served %d calls, want none", when, i, n.Load()-served[i])
			}
		}
	}
	refusedEverywhere("after the revocation")

	// Restart replica 1 at its address: the importer reconnects and is
	// refused there too.
	rs.procs[1].stop()
	rs.procs[1], _ = startSidecar(t, rs.args[1]...)
	admin := rs.procs[1].waitReady().Admin
	waitFor(t, 30*time.Second, "the importer to be refused by the restarted replica", func() bool {
		if code := callCode(client); code != codes.NotFound && code != codes.Unavailable {
			t.Fatalf("call while replica 1 restarts: %v, want NOT_FOUND", code)
		}
		return scrape(t, admin, "vatcar_restores_total", map[string]string{"result": "unknown"}) > 0
	})
	if ok := scrape(t, admin, "vatcar_restores_total", map[string]string{"result": "ok"}); ok != 0 {
		t.Errorf("restarted replica served %v restores of the revoked ref", ok)
	}
	refusedEverywhere("after replica 1 restarted")
}
