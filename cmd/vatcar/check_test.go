//go:build !nok8s

package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// These call runCheck in-process; the analysis is tested against golden
// files in package k8s (TestCheckGolden). They check the adapter: exit
// classes, where the findings go, and inject -f's share of them.

const checkDir = "../../k8s/testdata/check"

func TestCheckExitStatus(t *testing.T) {
	for _, tc := range []struct {
		name    string
		wantErr bool
	}{
		{"ok", false},
		{"warnings-only", false},
		{"missing", true},
		{"list", true},
	} {
		in := filepath.Join(checkDir, "in", tc.name+".yaml")
		golden, err := os.ReadFile(filepath.Join(checkDir, "out", tc.name+".txt"))
		if err != nil {
			t.Fatal(err)
		}
		want := strings.TrimSuffix(string(golden), "# exit status 0\n")
		want = strings.TrimSuffix(want, "# exit status 1\n")
		for _, args := range [][]string{{"-f", in}, {"-f", "-"}} {
			data, _ := os.ReadFile(in)
			var stdout, stderr bytes.Buffer
			err := runCheck(args, bytes.NewReader(data), &stdout, &stderr)
			if (err != nil) != tc.wantErr || errors.Is(err, errUsage) {
				t.Errorf("check %s %q: err = %v, want an error (exit 1): %v", tc.name, args, err, tc.wantErr)
			}
			if stdout.String() != want {
				t.Errorf("check %s %q: stdout\n%s\nwant the golden file's findings\n%s", tc.name, args, stdout.String(), want)
			}
		}
	}
}

func TestCheckUsageErrors(t *testing.T) {
	for _, args := range [][]string{{}, {"-f"}, {"-f", "a.yaml", "b.yaml"}, {"--kube-version", "new", "-f", "-"}} {
		var out bytes.Buffer
		if err := runCheck(args, strings.NewReader(""), &out, &out); !errors.Is(err, errUsage) {
			t.Errorf("check %q: err = %v, want a usage error (exit 2)", args, err)
		}
	}
	var out bytes.Buffer
	err := runCheck([]string{"-f", "-"}, strings.NewReader("kind: [\n"), &out, &out)
	if err == nil || errors.Is(err, errUsage) {
		t.Errorf("check of bad YAML: err = %v, want a plain error (exit 1)", err)
	}
}

// TestInjectPrintsCheckFindings: inject -f writes the manifests and exits 0,
// and puts on stderr what check finds (the Service without the CapTP port,
// the missing Secrets), each once.
func TestInjectPrintsCheckFindings(t *testing.T) {
	in := filepath.Join(checkDir, "in", "missing.yaml")
	var stdout, stderr bytes.Buffer
	if err := runInject(t.Context(), []string{"-f", in}, nil, &stdout, &stderr); err != nil {
		t.Fatalf("inject -f: %v", err)
	}
	if !strings.Contains(stdout.String(), "name: vatcar") {
		t.Errorf("inject -f wrote no injected manifest:\n%s", stdout.String())
	}
	for _, want := range []string{
		"error: Service shop/greeter: spec.ports: exposes port 80 but not the CapTP port 7440",
		"warning: Deployment shop/greeter: spec.template.metadata.annotations[vatcar.io/exports]: needs the vat key Secret shop/greeter-vatcar-key",
		"import stock needs the Secret shop/stock-vatcar-caps",
	} {
		if n := strings.Count(stderr.String(), want); n != 1 {
			t.Errorf("inject -f stderr has %q %d times, want once:\n%s", want, n, stderr.String())
		}
	}
}
