//go:build !nok8s

package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// These call runInject in-process; the injector itself is tested in package
// k8s. They check the adapter: flags, files, stdin, exit classes. The
// commands in every build, probe among them, are tested in probe_test.go and
// nok8s_test.go.

const goldenDir = "../../k8s/testdata/inject"

// goldenImage is the image the golden files pin (k8s's goldenImage); the
// default is the build's version (TestVersionStampedRelease).
const goldenImage = "--image=ghcr.io/vatcar/vatcar:latest"

func TestInjectFileMatchesGolden(t *testing.T) {
	want, err := os.ReadFile(filepath.Join(goldenDir, "out", "pod-exports.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	in := filepath.Join(goldenDir, "in", "pod-exports.yaml")
	image := goldenImage
	var stdout, stderr bytes.Buffer
	if err := runInject(context.Background(), []string{image, "-f", in}, strings.NewReader(""), &stdout, &stderr); err != nil {
		t.Fatalf("inject -f %s: %v\n%s", in, err, stderr.String())
	}
	if !bytes.Equal(stdout.Bytes(), want) {
		t.Fatalf("inject -f output differs from the golden file\n--- got\n%s", stdout.Bytes())
	}
	// The same through standard input.
	data, _ := os.ReadFile(in)
	stdout.Reset()
	if err := runInject(context.Background(), []string{image, "-f", "-"}, bytes.NewReader(data), &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(stdout.Bytes(), want) {
		t.Fatal("inject -f - output differs from inject -f FILE")
	}
}

// TestInjectSidecarFlagAnnotations runs the golden case with
// vatcar.io/proto-descriptors and vatcar.io/cpus through `vatcar inject -f`:
// the manifests on stdout, the CPU-limit warning on stderr.
func TestInjectSidecarFlagAnnotations(t *testing.T) {
	golden, err := os.ReadFile(filepath.Join(goldenDir, "out", "deployment-proto-descriptors.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, line := range strings.SplitAfter(string(golden), "\n") {
		if !strings.HasPrefix(line, "# warning: ") {
			want = append(want, line)
		}
	}
	in := filepath.Join(goldenDir, "in", "deployment-proto-descriptors.yaml")
	var stdout, stderr bytes.Buffer
	if err := runInject(context.Background(), []string{goldenImage, "-f", in}, nil, &stdout, &stderr); err != nil {
		t.Fatalf("inject -f %s: %v\n%s", in, err, stderr.String())
	}
	if got := stdout.String(); got != strings.Join(want, "") {
		t.Fatalf("inject -f output differs from the golden file\n--- got\n%s", got)
	}
	for _, arg := range []string{"--proto-descriptors=/var/run/vatcar/protos/descriptors.protoset", "--cpus=2"} {
		if !strings.Contains(stdout.String(), arg) {
			t.Errorf("output lacks %s", arg)
		}
	}
	if !strings.Contains(stderr.String(), "warning: Deployment/greeter: the sidecar runs on 2 CPUs") {
		t.Fatalf("stderr %q lacks the CPU limit warning", stderr.String())
	}
}

// TestInjectBadCPUsFails checks that a bad vatcar.io/cpus fails `vatcar
// inject -f` (exit 1, not a usage error) with a message naming the
// annotation and the value, and writes no manifests.
func TestInjectBadCPUsFails(t *testing.T) {
	for _, v := range []string{"0", "1.5", "lots"} {
		pod := "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    vatcar.io/cpus: \"" + v + "\"\n" +
			"spec:\n  containers:\n  - name: app\n    image: x\n"
		var stdout, stderr bytes.Buffer
		err := runInject(context.Background(), []string{"-f", "-"}, strings.NewReader(pod), &stdout, &stderr)
		if err == nil || errors.Is(err, errUsage) {
			t.Fatalf("cpus %q: err = %v, want a plain error (exit 1)", v, err)
		}
		if want := `vatcar.io/cpus: "` + v + `"`; !strings.Contains(err.Error(), want) {
			t.Errorf("cpus %q: error %q does not name %s", v, err, want)
		}
		if stdout.Len() != 0 {
			t.Errorf("cpus %q: wrote manifests despite the error:\n%s", v, stdout.String())
		}
	}
}

func TestInjectWarningsGoToStderr(t *testing.T) {
	in := filepath.Join(goldenDir, "in", "job.yaml")
	var stdout, stderr bytes.Buffer
	if err := runInject(context.Background(), []string{"--kube-version", "1.28", "-f", in}, nil, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr.String(), "warning: Job/report:") || strings.Contains(stdout.String(), "warning") {
		t.Fatalf("stderr %q, stdout has warnings: %v", stderr.String(), strings.Contains(stdout.String(), "warning"))
	}
}

func TestInjectUsageErrors(t *testing.T) {
	dir := t.TempDir()
	badConfig := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(badConfig, []byte("vatPort: 99999\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{},
		{"-f"},
		{"-f", "x.yaml", "extra"},
		{"--nope"},
		{"--config", badConfig, "-f", "-"},
		{"--kube-version", "new", "-f", "-"},
		{"serve"},
		{"serve", "--tls-cert", filepath.Join(dir, "missing.crt"), "--tls-key", filepath.Join(dir, "missing.key")},
		{"serve", "--log-format", "xml"},
		{"probe"},
		{"selftest", "extra"},
	} {
		var out bytes.Buffer
		err := runInject(context.Background(), args, strings.NewReader(""), &out, &out)
		if !errors.Is(err, errUsage) {
			t.Errorf("vatcar inject %q: err = %v, want a usage error (exit 2)", args, err)
		}
	}
}

func TestInjectBadManifestIsNotAUsageError(t *testing.T) {
	var out bytes.Buffer
	err := runInject(context.Background(), []string{"-f", "-"}, strings.NewReader("kind: [\n"), &out, &out)
	if err == nil || errors.Is(err, errUsage) {
		t.Fatalf("bad YAML: err = %v, want a plain error (exit 1)", err)
	}
	err = runInject(context.Background(), []string{"-f", filepath.Join(t.TempDir(), "none.yaml")}, nil, &out, &out)
	if err == nil || errors.Is(err, errUsage) {
		t.Fatalf("missing file: err = %v, want a plain error", err)
	}
}
