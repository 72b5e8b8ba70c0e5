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

// manifestSet is what Check reads from its input: the objects it looks at,
// in input order.
type manifestSet struct {
	workloads  []*workload
	services   []*corev1.Service
	secrets    map[objectKey]*corev1.Secret
	configMaps map[objectKey]*corev1.ConfigMap
	// nsLabels holds the labels of the Namespace objects in the input.
	nsLabels map[string]map[string]string
	// findings are problems found while reading (an object that does not
	// decode).
	findings []Finding
}

// objectKey names an object of one kind: namespace and name. An empty
// namespace is the one kubectl applies to.
type objectKey struct{ namespace, name string }

// workload is an object with a pod template.
type workload struct {
	kind, name, namespace string
	// tmplPath is the pod template's path in the object ("spec.template";
	// empty for a Pod).
	tmplPath string
	pod      corev1.Pod // metadata and spec of the template
	replicas *int64     // spec.replicas when the kind has it and it is set
}

// id is how findings name the workload.
func (w *workload) id() string { return objectID(w.kind, w.namespace, w.name) }

// field is the path of a field of the pod template in the object.
func (w *workload) field(path string) string {
	if w.tmplPath == "" {
		return path
	}
	return w.tmplPath + "." + path
}

// annotationField is the path of one annotation of the pod template.
func (w *workload) annotationField(key string) string {
	return w.field("metadata.annotations[" + key + "]")
}

// objectID names an object as findings do: "Kind namespace/name", or
// "Kind name" without a namespace.
func objectID(kind, namespace, name string) string {
	if name == "" {
		name = "(unnamed)"
	}
	if namespace == "" {
		return kind + " " + name
	}
	return kind + " " + namespace + "/" + name
}

// readManifests reads multi-document YAML, recursing into v1 Lists (what
// `kubectl get -o yaml` prints). Documents that are not YAML mappings are
// errors wrapping ErrBadManifest; objects that do not decode are findings.
func readManifests(in io.Reader) (*manifestSet, error) {
	set := &manifestSet{
		secrets:    map[objectKey]*corev1.Secret{},
		configMaps: map[objectKey]*corev1.ConfigMap{},
		nsLabels:   map[string]map[string]string{},
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(in))
	for n := 1; ; n++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return set, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%w: document %d: %v", ErrBadManifest, n, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("%w: document %d: %v", ErrBadManifest, n, err)
		}
		v, err := decodeJSONValue(js)
		if err != nil {
			return nil, fmt.Errorf("%w: document %d: %v", ErrBadManifest, n, err)
		}
		if v == nil { // only comments
			continue
		}
		obj, ok := v.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("%w: document %d: not a mapping", ErrBadManifest, n)
		}
		set.add(obj)
	}
}

// add files obj (and a List's items) under its kind.
func (set *manifestSet) add(obj map[string]any) {
	apiVersion, _ := obj["apiVersion"].(string)
	kind, _ := obj["kind"].(string)
	meta, _ := obj["metadata"].(map[string]any)
	name, _ := meta["name"].(string)
	namespace, _ := meta["namespace"].(string)
	id := objectID(kind, namespace, name)
	if apiVersion == "v1" && strings.HasSuffix(kind, "List") {
		items, _ := obj["items"].([]any)
		for _, it := range items {
			if m, ok := it.(map[string]any); ok {
				set.add(m)
			}
		}
		return
	}
	bad := func(field string, err error) {
		set.findings = append(set.findings, Finding{Severity: SeverityError, Object: id, Field: field, Message: err.Error()})
	}
	switch apiVersion + "/" + kind {
	case "v1/Service":
		var svc corev1.Service
		if err := remarshal(obj, &svc); err != nil {
			bad("", err)
			return
		}
		set.services = append(set.services, &svc)
	case "v1/Secret":
		var sec corev1.Secret
		if err := remarshal(obj, &sec); err != nil {
			bad("data", err)
			return
		}
		set.secrets[objectKey{namespace, name}] = &sec
	case "v1/ConfigMap":
		var cm corev1.ConfigMap
		if err := remarshal(obj, &cm); err != nil {
			bad("", err)
			return
		}
		set.configMaps[objectKey{namespace, name}] = &cm
	case "v1/Namespace":
		labels := map[string]string{}
		if l, ok := meta["labels"].(map[string]any); ok {
			for k, v := range l {
				labels[k], _ = v.(string)
			}
		}
		set.nsLabels[name] = labels
	}
	path, ok := templatePaths[apiVersion+"/"+kind]
	if !ok {
		return
	}
	w := &workload{kind: kind, name: name, namespace: namespace, tmplPath: strings.Join(path, ".")}
	tmpl := obj
	for _, p := range path {
		next, ok := tmpl[p].(map[string]any)
		if !ok {
			bad(w.tmplPath, fmt.Errorf("no pod template"))
			return
		}
		tmpl = next
	}
	if err := remarshal(map[string]any{"metadata": tmpl["metadata"], "spec": tmpl["spec"]}, &w.pod); err != nil {
		bad(w.tmplPath, fmt.Errorf("pod template: %v", err))
		return
	}
	if spec, ok := obj["spec"].(map[string]any); ok && kind != "Pod" {
		if n, ok := spec["replicas"].(json.Number); ok {
			if r, err := n.Int64(); err == nil {
				w.replicas = &r
			}
		}
	}
	set.workloads = append(set.workloads, w)
}

// remarshal decodes a generic JSON value into a typed object.
func remarshal(v any, out any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}
