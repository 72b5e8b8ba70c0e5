package k8s

import (
	"io"
	"os"
	"path"
	"strconv"
	"strings"
	"testing"

	"github.com/vatcar/vatcar/sidecar"
	corev1 "k8s.io/api/core/v1"
)

// TestInjectedArgsParseAsVatcarRun checks the contract with package sidecar:
// every injected sidecar's arguments, once Kubernetes has expanded
// $(VATCAR_NAMESPACE), are a valid `vatcar run` command line.
func TestInjectedArgsParseAsVatcarRun(t *testing.T) {
	checked, protos := 0, 0
	for _, c := range goldenCases(t) {
		if strings.HasPrefix(c.name, "error-") {
			continue
		}
		out, err := os.ReadFile(c.out)
		if err != nil {
			t.Fatal(err)
		}
		for _, pod := range podsOf(t, stripComments(out)) {
			for _, ct := range append(pod.Spec.InitContainers, pod.Spec.Containers...) {
				if ct.Name != SidecarName {
					continue
				}
				checked++
				args := expandEnv(ct.Args, ct.Env)
				if args[0] != "run" {
					t.Fatalf("%s: sidecar args start with %q, want run", c.name, args[0])
				}
				cfg, err := sidecar.ParseFlags(args[1:], io.Discard)
				if err != nil {
					t.Fatalf("%s: vatcar run %q: %v", c.name, args[1:], err)
				}
				if cfg.AdminListen == "" {
					t.Fatalf("%s: parsed config has no admin listener", c.name)
				}
				for _, f := range cfg.ProtoDescriptors {
					if !mountedConfigMapFile(pod, ct, f) {
						t.Fatalf("%s: --proto-descriptors %s is not a ConfigMap key mounted into the sidecar", c.name, f)
					}
					protos++
				}
			}
		}
	}
	if checked < 5 || protos < 1 {
		t.Fatalf("checked %d injected sidecars and %d descriptor files, want the golden outputs' (at least 5 and 1)", checked, protos)
	}
}

// mountedConfigMapFile reports whether file is a key of a ConfigMap volume
// that ct mounts read-only.
func mountedConfigMapFile(pod *corev1.Pod, ct corev1.Container, file string) bool {
	dir, base := path.Split(file)
	for _, m := range ct.VolumeMounts {
		if path.Clean(m.MountPath) != path.Clean(dir) || !m.ReadOnly {
			continue
		}
		for _, v := range pod.Spec.Volumes {
			if v.Name != m.Name || v.ConfigMap == nil {
				continue
			}
			for _, it := range v.ConfigMap.Items {
				if it.Path == base {
					return true
				}
			}
		}
	}
	return false
}

// TestMaxCPUsMatchesVatcarRun checks that the injector accepts the same
// --cpus values as `vatcar run`.
func TestMaxCPUsMatchesVatcarRun(t *testing.T) {
	for n, ok := range map[int]bool{1: true, MaxCPUs: true, MaxCPUs + 1: false} {
		_, err := sidecar.ParseFlags([]string{"--admin-listen=127.0.0.1:7441", "--cpus=" + strconv.Itoa(n)}, io.Discard)
		if (err == nil) != ok {
			t.Errorf("vatcar run --cpus=%d: err = %v, want accepted %v", n, err, ok)
		}
	}
}

// expandEnv does Kubernetes' $(VAR) expansion of container args, with
// downward-API variables given sample values.
func expandEnv(args []string, env []corev1.EnvVar) []string {
	out := make([]string, len(args))
	for i, a := range args {
		for _, e := range env {
			v := e.Value
			if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
				v = "sample-" + strings.ReplaceAll(e.ValueFrom.FieldRef.FieldPath, ".", "-")
			}
			a = strings.ReplaceAll(a, "$("+e.Name+")", v)
		}
		out[i] = a
	}
	return out
}
