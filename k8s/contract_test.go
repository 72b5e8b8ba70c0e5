package k8s

import (
	"io"
	"os"
	"strings"
	"testing"

	"github.com/vatcar/vatcar/sidecar"
	corev1 "k8s.io/api/core/v1"
)

// TestInjectedArgsParseAsVatcarRun checks the contract with package sidecar:
// every injected sidecar's arguments, once Kubernetes has expanded
// $(VATCAR_NAMESPACE), are a valid `vatcar run` command line.
func TestInjectedArgsParseAsVatcarRun(t *testing.T) {
	checked := 0
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
			}
		}
	}
	if checked < 5 {
		t.Fatalf("checked %d injected sidecars, want the golden outputs' (at least 5)", checked)
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
