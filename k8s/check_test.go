package k8s

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// renderCheck is what a check golden file holds: one finding per line, then
// the exit status `vatcar check` gives.
func renderCheck(t *testing.T, input []byte) []byte {
	t.Helper()
	inj, err := NewInjector(Config{})
	if err != nil {
		t.Fatal(err)
	}
	findings, err := inj.Check(bytes.NewReader(input), CheckConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	for _, f := range findings {
		b.WriteString(f.String() + "\n")
	}
	status := 0
	if HasErrors(findings) {
		status = 1
	}
	b.WriteString("# exit status " + string(rune('0'+status)) + "\n")
	return b.Bytes()
}

// TestCheckGolden runs Check over testdata/check/in/*.yaml, each with one
// kind of problem, against testdata/check/out (-update regenerates).
func TestCheckGolden(t *testing.T) {
	inputs, err := filepath.Glob("testdata/check/in/*.yaml")
	if err != nil || len(inputs) < 6 {
		t.Fatalf("check golden inputs: %v, %d files", err, len(inputs))
	}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".yaml")
		t.Run(name, func(t *testing.T) {
			input, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			got := renderCheck(t, input)
			out := filepath.Join("testdata/check/out", name+".txt")
			if *update {
				if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(out, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(out)
			if err != nil {
				t.Fatalf("no golden file (go test ./k8s -run TestCheckGolden -update): %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("Check(%s) differs from %s\n--- got\n%s--- want\n%s", in, out, got, want)
			}
		})
	}
}

// TestCheckOKHasNoFindings pins the point of ok.yaml, whatever its golden
// file says: a complete deployment is clean.
func TestCheckOKHasNoFindings(t *testing.T) {
	input, err := os.ReadFile("testdata/check/in/ok.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := string(renderCheck(t, input)); got != "# exit status 0\n" {
		t.Errorf("ok.yaml: findings\n%s", got)
	}
}

// TestCheckInjectedOutputIsClean: checking what inject -f wrote finds nothing
// new (injected pods are left alone) and checking the inject goldens' inputs
// never fails on input inject accepts.
func TestCheckBadYAMLIsAnError(t *testing.T) {
	inj, err := NewInjector(Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range []string{"kind: [\n", "- a\n- b\n"} {
		if _, err := inj.Check(strings.NewReader(in), CheckConfig{}); !errors.Is(err, ErrBadManifest) {
			t.Errorf("Check(%q) = %v, want ErrBadManifest", in, err)
		}
	}
}

// TestCheckSkipInjectorWarnings: with SkipInjectorWarnings, the warnings
// InjectManifests gives are left out and the rest stay.
func TestCheckSkipInjectorWarnings(t *testing.T) {
	input, err := os.ReadFile("testdata/check/in/opt-in.yaml")
	if err != nil {
		t.Fatal(err)
	}
	inj, err := NewInjector(Config{})
	if err != nil {
		t.Fatal(err)
	}
	all, err := inj.Check(bytes.NewReader(input), CheckConfig{})
	if err != nil {
		t.Fatal(err)
	}
	some, err := inj.Check(bytes.NewReader(input), CheckConfig{SkipInjectorWarnings: true})
	if err != nil {
		t.Fatal(err)
	}
	injWarnings, _ := InjectManifests(inj, bytes.NewReader(filterOut(input, "odd")), &bytes.Buffer{})
	if len(injWarnings) == 0 || len(all)-len(some) != len(injWarnings) {
		t.Fatalf("%d findings, %d without the injector's, which gives %d warnings", len(all), len(some), len(injWarnings))
	}
	for _, w := range injWarnings {
		for _, f := range some {
			if strings.Contains(w, f.Message) {
				t.Errorf("finding %q repeats the injector's warning %q", f, w)
			}
		}
	}
}

// filterOut drops the documents of input that mention s.
func filterOut(input []byte, s string) []byte {
	var keep [][]byte
	for _, doc := range bytes.Split(input, []byte("\n---\n")) {
		if !bytes.Contains(doc, []byte(s)) {
			keep = append(keep, doc)
		}
	}
	return bytes.Join(keep, []byte("\n---\n"))
}
