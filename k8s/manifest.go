package k8s

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// templatePaths says where each workload kind keeps its pod template; nil
// means the object is the pod itself. Kinds not listed pass through.
var templatePaths = map[string][]string{
	"v1/Pod":              nil,
	"apps/v1/Deployment":  {"spec", "template"},
	"apps/v1/StatefulSet": {"spec", "template"},
	"apps/v1/DaemonSet":   {"spec", "template"},
	"apps/v1/ReplicaSet":  {"spec", "template"},
	"batch/v1/Job":        {"spec", "template"},
	"batch/v1/CronJob":    {"spec", "jobTemplate", "spec", "template"},
}

// InjectManifests copies the multi-document YAML in to out with the sidecar
// added to every pod template (Pods, Deployments, StatefulSets, DaemonSets,
// ReplicaSets, Jobs, CronJobs, and those inside a v1 List) that did not opt
// out, as `istioctl kube-inject` does. Other documents, and workloads left
// alone, are copied byte for byte. Injected documents are re-encoded (keys
// sorted, comments dropped); fields unknown to the injector are kept. It
// returns warnings for the user, each naming its object.
func InjectManifests(inj *Injector, in io.Reader, out io.Writer) ([]string, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(in))
	var warnings []string
	first := true
	for n := 1; ; n++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return warnings, nil
		}
		if err != nil {
			return warnings, fmt.Errorf("%w: document %d: %v", ErrBadManifest, n, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		outDoc, w, err := injectDocument(inj, doc)
		if err != nil {
			return warnings, fmt.Errorf("document %d: %w", n, err)
		}
		warnings = append(warnings, w...)
		if !first {
			if _, err := io.WriteString(out, "---\n"); err != nil {
				return warnings, fmt.Errorf("write manifests: %w", err)
			}
		}
		first = false
		if len(outDoc) > 0 && outDoc[len(outDoc)-1] != '\n' {
			outDoc = append(outDoc, '\n')
		}
		if _, err := out.Write(outDoc); err != nil {
			return warnings, fmt.Errorf("write manifests: %w", err)
		}
	}
}

// injectDocument returns doc with its pod templates injected, or doc itself
// when nothing changed.
func injectDocument(inj *Injector, doc []byte) ([]byte, []string, error) {
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrBadManifest, err)
	}
	v, err := decodeJSONValue(js)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrBadManifest, err)
	}
	obj, ok := v.(map[string]any)
	if !ok {
		if v == nil { // only comments
			return doc, nil, nil
		}
		return nil, nil, fmt.Errorf("%w: not a mapping", ErrBadManifest)
	}
	changed, warnings, err := injectObject(inj, obj)
	if err != nil || !changed {
		return doc, warnings, err
	}
	js, err = json.Marshal(obj)
	if err != nil {
		return nil, nil, fmt.Errorf("encode manifest: %w", err)
	}
	out, err := yaml.JSONToYAML(js)
	if err != nil {
		return nil, nil, fmt.Errorf("encode manifest: %w", err)
	}
	return out, warnings, nil
}

// injectObject injects obj's pod template in place, recursing into v1 Lists.
func injectObject(inj *Injector, obj map[string]any) (bool, []string, error) {
	apiVersion, _ := obj["apiVersion"].(string)
	kind, _ := obj["kind"].(string)
	meta, _ := obj["metadata"].(map[string]any)
	name, _ := meta["name"].(string)
	id := kind + "/" + name
	if apiVersion == "v1" && strings.HasSuffix(kind, "List") {
		items, _ := obj["items"].([]any)
		var changed bool
		var warnings []string
		for _, it := range items {
			m, ok := it.(map[string]any)
			if !ok {
				continue
			}
			c, w, err := injectObject(inj, m)
			if err != nil {
				return false, warnings, err
			}
			changed = changed || c
			warnings = append(warnings, w...)
		}
		return changed, warnings, nil
	}
	path, ok := templatePaths[apiVersion+"/"+kind]
	if !ok {
		return false, nil, nil
	}
	tmpl := obj
	for _, p := range path {
		next, ok := tmpl[p].(map[string]any)
		if !ok {
			return false, nil, fmt.Errorf("%w: %s has no %s", ErrBadManifest, id, strings.Join(path, "."))
		}
		tmpl = next
	}
	for _, k := range []string{"metadata", "spec"} {
		if _, ok := tmpl[k].(map[string]any); !ok {
			tmpl[k] = map[string]any{}
		}
	}
	podJSON, err := json.Marshal(map[string]any{"metadata": tmpl["metadata"], "spec": tmpl["spec"]})
	if err != nil {
		return false, nil, fmt.Errorf("%s: encode pod template: %w", id, err)
	}
	var pod corev1.Pod
	if err := json.Unmarshal(podJSON, &pod); err != nil {
		return false, nil, fmt.Errorf("%w: %s: pod template: %v", ErrBadManifest, id, err)
	}
	ops, res, err := inj.patchOps(&pod, Target{Workload: name, Force: true})
	if err != nil {
		return false, nil, fmt.Errorf("%s: %w", id, err)
	}
	var warnings []string
	for _, w := range res.Warnings {
		warnings = append(warnings, id+": "+w)
	}
	if len(ops) == 0 {
		return false, warnings, nil
	}
	if _, err := Apply(tmpl, ops); err != nil {
		return false, nil, fmt.Errorf("%s: %w", id, err)
	}
	return true, warnings, nil
}
