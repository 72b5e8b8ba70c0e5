package main_test

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vatcar/vatcar/k8s"
)

// TestVersion: `vatcar version` and `vatcar --version` print one line with
// the version, the revision and the Go version.
func TestVersion(t *testing.T) {
	out := run(t, "version")
	if !strings.HasPrefix(out, "vatcar ") || !strings.Contains(out, "(revision ") ||
		!strings.Contains(out, runtime.Version()) || strings.Count(out, "\n") != 1 {
		t.Errorf("vatcar version printed %q, want one line: vatcar VERSION (revision REV, %s)", out, runtime.Version())
	}
	if again := run(t, "--version"); again != out {
		t.Errorf("vatcar --version printed %q, vatcar version %q", again, out)
	}
	p := start(t, "version", "extra")
	if code := p.wait(30 * time.Second); code != 2 {
		t.Errorf("vatcar version extra: exit %d, want 2", code)
	}
}

// TestVersionStampedRelease builds vatcar as a release (the version stamped
// at link time, as tools/build.sh does with VATCAR_VERSION) and checks that
// `version` reports it, with the git revision when built in a work tree,
// and that `inject -f` defaults to the sidecar image of that release; the
// test binary (a development build) defaults to the chart's appVersion.
func TestVersionStampedRelease(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "vatcar")
	args := []string{"build", "-ldflags", "-X github.com/vatcar/vatcar/internal/buildinfo.stamped=v9.8.7", "-o", bin}
	rev, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err == nil {
		args = append(args, "-buildvcs=true")
	}
	if out, err := exec.Command("go", append(args, ".")...).CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	p := startBinary(t, bin, nil, "version")
	if code := p.wait(30 * time.Second); code != 0 {
		t.Fatalf("version: exit %d", code)
	}
	out := p.stderr.String()
	if !strings.HasPrefix(out, "vatcar v9.8.7 (revision ") {
		t.Errorf("stamped build: version %q, want vatcar v9.8.7 (revision ...)", out)
	}
	if rev := strings.TrimSpace(string(rev)); rev != "" && !strings.Contains(out, "revision "+rev) {
		t.Errorf("stamped build in a git work tree: version %q, want revision %s", out, rev)
	}

	const pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: app, image: x}]}\n"
	for _, tc := range []struct{ bin, image string }{
		{bin, "ghcr.io/vatcar/vatcar:9.8.7"},
		{binary, "ghcr.io/vatcar/vatcar:" + k8s.ChartAppVersion},
	} {
		cmd := exec.Command(tc.bin, "inject", "-f", "-")
		cmd.Stdin = strings.NewReader(pod)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s inject -f: %v", tc.bin, err)
		}
		if !strings.Contains(string(out), "image: "+tc.image+"\n") {
			t.Errorf("%s inject -f: want the sidecar image %s:\n%s", tc.bin, tc.image, out)
		}
	}
}
