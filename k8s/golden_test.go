package k8s

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// goldenCase is one input manifest under testdata/inject/in, with an
// optional injector config under testdata/inject/config.
type goldenCase struct {
	name, in, out string
	cfg           Config
}

func goldenCases(t *testing.T) []goldenCase {
	t.Helper()
	inputs, err := filepath.Glob("testdata/inject/in/*.yaml")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	var cases []goldenCase
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".yaml")
		c := goldenCase{name: name, in: in, out: filepath.Join("testdata/inject/out", name+".yaml")}
		if data, err := os.ReadFile(filepath.Join("testdata/inject/config", name+".yaml")); err == nil {
			if c.cfg, err = ParseConfig(data); err != nil {
				t.Fatalf("%s: config: %v", name, err)
			}
		}
		cases = append(cases, c)
	}
	return cases
}

// goldenImage is the sidecar image in golden files whose config names none.
const goldenImage = "ghcr.io/vatcar/vatcar:latest"

// render runs InjectManifests and renders what a golden file holds: the
// warnings and error as comments, then the output.
func render(t *testing.T, cfg Config, input []byte) (golden, manifests []byte) {
	t.Helper()
	if cfg.Image == "" {
		// The default depends on the test binary's version
		// (TestDefaultImageIsTheBuildsRelease); golden files stay put.
		cfg.Image = goldenImage
	}
	inj, err := NewInjector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var out, head bytes.Buffer
	warnings, err := InjectManifests(inj, bytes.NewReader(input), &out)
	for _, w := range warnings {
		head.WriteString("# warning: " + w + "\n")
	}
	if err != nil {
		head.WriteString("# error: " + err.Error() + "\n")
		return head.Bytes(), nil
	}
	return append(head.Bytes(), out.Bytes()...), out.Bytes()
}

func TestInjectGolden(t *testing.T) {
	for _, c := range goldenCases(t) {
		t.Run(c.name, func(t *testing.T) {
			input, err := os.ReadFile(c.in)
			if err != nil {
				t.Fatal(err)
			}
			got, manifests := render(t, c.cfg, input)
			if *update {
				if err := os.WriteFile(c.out, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(c.out)
			if err != nil {
				t.Fatalf("no golden file for %s (run go test ./k8s -run TestInjectGolden -update): %v", c.in, err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("output differs from %s (rerun with -update if intended)\n--- got\n%s\n--- want\n%s", c.out, got, want)
			}
			if strings.HasPrefix(c.name, "error-") {
				if manifests != nil {
					t.Fatalf("%s: want an error, got output", c.name)
				}
				return
			}
			if manifests == nil {
				t.Fatalf("%s: unexpected error:\n%s", c.name, got)
			}
			// Idempotency: injecting the output changes nothing.
			again, _ := render(t, c.cfg, manifests)
			if !bytes.Equal(stripComments(again), manifests) {
				t.Fatalf("injecting twice changed the output\n--- first\n%s\n--- second\n%s", manifests, again)
			}
			decodeStrict(t, manifests)
		})
	}
}

// TestGoldenFilesHaveInputs fails on golden files left over from a removed
// input.
func TestGoldenFilesHaveInputs(t *testing.T) {
	outs, _ := filepath.Glob("testdata/inject/out/*.yaml")
	for _, out := range outs {
		if _, err := os.Stat(filepath.Join("testdata/inject/in", filepath.Base(out))); err != nil {
			t.Errorf("golden file %s has no input", out)
		}
	}
}

func stripComments(b []byte) []byte {
	var out []string
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if !strings.HasPrefix(line, "# warning: ") {
			out = append(out, line)
		}
	}
	return []byte(strings.Join(out, ""))
}

// decodeStrict decodes each injected workload strictly into its k8s.io/api
// type, so a field the injector writes wrong or misspells fails.
func decodeStrict(t *testing.T, manifests []byte) {
	t.Helper()
	for i, doc := range bytes.Split(manifests, []byte("\n---\n")) {
		var head struct{ APIVersion, Kind string }
		if err := yaml.Unmarshal(doc, &head); err != nil {
			t.Fatalf("document %d: %v", i, err)
		}
		var obj any
		switch head.APIVersion + "/" + head.Kind {
		case "v1/Pod":
			obj = &corev1.Pod{}
		case "apps/v1/Deployment":
			obj = &appsv1.Deployment{}
		case "apps/v1/StatefulSet":
			obj = &appsv1.StatefulSet{}
		case "apps/v1/DaemonSet":
			obj = &appsv1.DaemonSet{}
		case "batch/v1/Job":
			obj = &batchv1.Job{}
		case "batch/v1/CronJob":
			obj = &batchv1.CronJob{}
		default:
			continue
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			t.Fatalf("document %d (%s): strict decode: %v", i, head.Kind, err)
		}
	}
}

// TestPatchMatchesInject checks, for every pod template in the golden
// inputs, that the webhook's JSON patch applied to the pod gives exactly the
// pod Inject returns.
func TestPatchMatchesInject(t *testing.T) {
	for _, c := range goldenCases(t) {
		if strings.HasPrefix(c.name, "error-") {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			input, _ := os.ReadFile(c.in)
			inj, err := NewInjector(c.cfg)
			if err != nil {
				t.Fatal(err)
			}
			for _, pod := range podsOf(t, input) {
				tgt := Target{Force: true, Workload: "w"}
				res, err := inj.Inject(pod, tgt)
				if err != nil {
					t.Fatal(err)
				}
				patch, _, err := inj.Patch(pod, tgt)
				if err != nil {
					t.Fatal(err)
				}
				if !res.Injected {
					if patch != nil {
						t.Fatalf("pod %s not injected (%s) but patched: %s", pod.Name, res.Reason, patch)
					}
					continue
				}
				doc, _ := toJSONValue(pod)
				var ops []Op
				if err := json.Unmarshal(patch, &ops); err != nil {
					t.Fatal(err)
				}
				patched, err := Apply(doc, ops)
				if err != nil {
					t.Fatalf("apply patch: %v\n%s", err, patch)
				}
				got, _ := json.Marshal(patched)
				want, _ := json.Marshal(res.Pod)
				if !jsonEqual(t, got, want) {
					t.Fatalf("patched pod differs\n--- got\n%s\n--- want\n%s", got, want)
				}
				again, err := inj.Inject(res.Pod, tgt)
				if err != nil || again.Injected || again.Reason != ReasonInjected {
					t.Fatalf("second Inject: injected=%v reason=%q err=%v, want %q", again.Injected, again.Reason, err, ReasonInjected)
				}
			}
		})
	}
}

// podsOf returns the pod templates of a manifest's workloads, as pods.
func podsOf(t *testing.T, manifest []byte) []*corev1.Pod {
	t.Helper()
	var pods []*corev1.Pod
	for _, doc := range bytes.Split(manifest, []byte("\n---\n")) {
		var head struct{ Kind string }
		_ = yaml.Unmarshal(doc, &head)
		var tmpl corev1.PodTemplateSpec
		switch head.Kind {
		case "Pod":
			var p corev1.Pod
			if err := yaml.Unmarshal(doc, &p); err != nil {
				t.Fatal(err)
			}
			pods = append(pods, &p)
			continue
		case "Deployment", "StatefulSet", "DaemonSet", "Job":
			var w struct {
				Spec struct{ Template corev1.PodTemplateSpec }
			}
			if err := yaml.Unmarshal(doc, &w); err != nil {
				t.Fatal(err)
			}
			tmpl = w.Spec.Template
		case "CronJob":
			var cj batchv1.CronJob
			if err := yaml.Unmarshal(doc, &cj); err != nil {
				t.Fatal(err)
			}
			tmpl = cj.Spec.JobTemplate.Spec.Template
		default:
			continue
		}
		pods = append(pods, &corev1.Pod{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec})
	}
	return pods
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	va, err := decodeJSONValue(a)
	if err != nil {
		t.Fatal(err)
	}
	vb, err := decodeJSONValue(b)
	if err != nil {
		t.Fatal(err)
	}
	ja, _ := json.Marshal(va)
	jb, _ := json.Marshal(vb)
	return bytes.Equal(ja, jb)
}
