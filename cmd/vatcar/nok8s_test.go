package main_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The sidecar image ships the -tags nok8s build (tools/build.sh --sidecar):
// no Kubernetes packages, so an idle sidecar maps less code. These check what
// it keeps and what it leaves out.

// notKubernetes are the packages under the Kubernetes domains that the
// sidecar links on purpose: sigs.k8s.io/yaml is a YAML library (over
// go.yaml.in/yaml) that reads `vatcar run --config` (sidecar/flags.go); it
// has no Kubernetes types or clients, and go list -deps would show any
// Kubernetes package it pulled in.
var notKubernetes = map[string]bool{"sigs.k8s.io/yaml": true}

// kubePackages runs go list -deps on this package with args and returns the
// Kubernetes packages (k8s.io/..., sigs.k8s.io/... less notKubernetes) among
// the dependencies.
func kubePackages(t *testing.T, args ...string) []string {
	t.Helper()
	cmd := exec.Command("go", append(append([]string{"list", "-deps"}, args...), ".")...)
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("go list -deps %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	var kube []string
	for _, pkg := range strings.Fields(string(out)) {
		if (strings.HasPrefix(pkg, "k8s.io/") || strings.HasPrefix(pkg, "sigs.k8s.io/")) && !notKubernetes[pkg] {
			kube = append(kube, pkg)
		}
	}
	return kube
}

func TestSidecarBuildLinksNoKubernetes(t *testing.T) {
	if kube := kubePackages(t, "-tags", "nok8s"); len(kube) > 0 {
		t.Fatalf("the -tags nok8s build depends on %d Kubernetes packages, e.g. %s", len(kube), kube[0])
	}
	// The check can fail: the default build has them (the injector).
	if kube := kubePackages(t); len(kube) == 0 {
		t.Fatal("the default build lists no Kubernetes package; is the check looking at the right names?")
	}
}

// exitOf runs the sidecar build with args and returns its exit status and
// output.
func exitOf(t *testing.T, args ...string) (int, string) {
	t.Helper()
	out, err := exec.Command(sidecarBinary, args...).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, string(out)
}

// TestSidecarBuildProbesARealSidecar runs the sidecar build as the injected
// container does: `vatcar run`, probed by `vatcar inject probe` on its admin
// port (the commands k8s.Injector writes).
func TestSidecarBuildProbesARealSidecar(t *testing.T) {
	p, addrs := startSidecarBinary(t, sidecarBinary, nil, "--listen", "tcp:127.0.0.1:0")
	for _, path := range []string{"readyz", "healthz"} {
		url := "http://" + addrs.Admin + "/" + path
		if code, out := exitOf(t, "inject", "probe", "--wait=20s", url); code != 0 {
			t.Fatalf("vatcar inject probe %s: exit %d\n%s", url, code, out)
		}
	}
	url := "http://" + addrs.Admin + "/no-such-path"
	if code, out := exitOf(t, "inject", "probe", "--timeout=5s", url); code != 1 || !strings.Contains(out, "probe failed") {
		t.Fatalf("vatcar inject probe %s: exit %d, want 1 (probe failed)\n%s", url, code, out)
	}
	p.stop()
	url = "http://" + addrs.Admin + "/readyz"
	if code, out := exitOf(t, "inject", "probe", "--timeout=5s", url); code != 1 {
		t.Fatalf("vatcar inject probe of a stopped sidecar: exit %d, want 1\n%s", code, out)
	}
}

// TestSidecarBuildRefusesInjector checks that the injector's commands fail
// with exit status 2 and say which image has them.
func TestSidecarBuildRefusesInjector(t *testing.T) {
	for _, args := range [][]string{
		{"inject", "-f", "-"},
		{"inject", "--kube-version", "1.31", "-f", "deploy.yaml"},
		{"inject", "serve", "--listen", "127.0.0.1:0"},
		{"inject", "selftest"},
		{"check", "-f", "-"},
	} {
		code, out := exitOf(t, args...)
		if code != 2 {
			t.Errorf("vatcar %q: exit %d, want 2\n%s", args, code, out)
		}
		for _, want := range []string{"is not in this build (-tags nok8s, the sidecar image)", "use the vatcar-injector image or a full build"} {
			if !strings.Contains(out, want) {
				t.Errorf("vatcar %q: output %q lacks %q", args, out, want)
			}
		}
	}
	if code, out := exitOf(t, "run", "--help"); code != 0 || !strings.Contains(out, "-listen") {
		t.Fatalf("vatcar run --help: exit %d\n%s", code, out)
	}
}
