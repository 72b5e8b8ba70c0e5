package k8s

import (
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Severity says whether a Finding breaks the deployment.
type Severity int

const (
	// SeverityWarning is a finding that may be fine (an object that is not
	// in the input may exist in the cluster) or costs something (a Service
	// that is not headless).
	SeverityWarning Severity = iota
	// SeverityError is a finding that breaks the workload's sidecar: the
	// webhook denies the pod, or the sidecar cannot be reached or start.
	SeverityError
)

func (s Severity) String() string {
	if s == SeverityError {
		return "error"
	}
	return "warning"
}

// Finding is one problem Check found. It names the object and the field.
type Finding struct {
	Severity Severity
	// Object is "Kind namespace/name" ("Kind name" without a namespace).
	Object string
	// Field is the path of the field in Object, e.g.
	// "spec.template.metadata.annotations[vatcar.io/exports]"; empty: the
	// object as a whole.
	Field string
	// Message says what is wrong and, where it can, what to do.
	Message string
}

// String is the line `vatcar check` prints:
// "error: Deployment shop/greeter: spec.ports: ...".
func (f Finding) String() string {
	if f.Field == "" {
		return f.Severity.String() + ": " + f.Object + ": " + f.Message
	}
	return f.Severity.String() + ": " + f.Object + ": " + f.Field + ": " + f.Message
}

// CheckConfig tunes Check. The zero value reports everything.
type CheckConfig struct {
	// SkipInjectorWarnings leaves out the warnings Inject itself gives
	// (InjectManifests reports those), so `vatcar inject -f` can print the
	// rest of Check's findings without repeating them.
	SkipInjectorWarnings bool
	// Force checks every workload that does not opt out, as
	// InjectManifests (`vatcar inject -f`) injects them all; otherwise a
	// workload must opt in (annotation, or a labelled Namespace in the
	// input) or carry vatcar.io annotations.
	Force bool
}

// Check is an offline preflight of the manifests in in (multi-document
// YAML, v1 Lists included: what `kubectl get -o yaml` prints, or the files
// about to be applied), in the spirit of `istioctl analyze`. For every
// workload that opts in to the sidecar (or carries vatcar.io annotations,
// which is then a warning: the namespace label may opt it in), it checks
// that the annotations parse and fit the pod as the injector reads them; that
// the vat key Secret it mounts is in the input with its key.pem (a Secret
// missing from the input is reported as required: a warning, since it may
// exist in the cluster); that a Service of the name its URIs carry selects
// its pods and exposes the CapTP port (a warning unless headless: importers
// balance over replicas only through clusterIP: None); and that the Secrets
// its imports name and the ConfigMap of its proto descriptors hold their
// keys. Findings come in input order, errors and warnings mixed; the error
// is for input that is not YAML.
func (inj *Injector) Check(in io.Reader, cfg CheckConfig) ([]Finding, error) {
	set, err := readManifests(in)
	if err != nil {
		return nil, err
	}
	findings := set.findings
	for _, w := range set.workloads {
		findings = append(findings, inj.checkWorkload(set, w, cfg)...)
	}
	return findings, nil
}

// HasErrors reports whether any finding is an error.
func HasErrors(findings []Finding) bool {
	return slices.ContainsFunc(findings, func(f Finding) bool { return f.Severity == SeverityError })
}

// checkWorkload checks one workload.
func (inj *Injector) checkWorkload(set *manifestSet, w *workload, cfg CheckConfig) []Finding {
	var out []Finding
	add := func(sev Severity, field, format string, a ...any) {
		out = append(out, Finding{Severity: sev, Object: w.id(), Field: field, Message: fmt.Sprintf(format, a...)})
	}
	pod := &w.pod
	if _, ok := pod.Labels[LabelInjector]; ok {
		return nil
	}
	if injected(&pod.Spec) {
		return nil // already injected: the webhook leaves it alone
	}
	optIn, known := false, false
	if v, ok := pod.Annotations[AnnotationInject]; ok {
		on, err := parseSwitch(AnnotationInject, v)
		if err != nil {
			add(SeverityError, w.annotationField(AnnotationInject), "%v", err)
			return out
		}
		if !on {
			return nil
		}
		optIn, known = true, true
	}
	if v, ok := set.nsLabels[w.namespace][LabelNamespaceInject]; ok && !known {
		on, err := parseSwitch(LabelNamespaceInject, v)
		if err != nil {
			out = append(out, Finding{Severity: SeverityError, Object: objectID("Namespace", "", w.namespace),
				Field: "metadata.labels[" + LabelNamespaceInject + "]", Message: fmt.Sprintf(
					"%q: want enabled or disabled (the pods of %s are neither injected nor skipped for it)", v, w.id())})
			return out
		}
		if !on {
			return nil
		}
		optIn = true
	}
	if !optIn && cfg.Force {
		optIn = true
	}
	if !optIn {
		var keys []string
		for k := range pod.Annotations {
			if strings.HasPrefix(k, "vatcar.io/") {
				keys = append(keys, k)
			}
		}
		if len(keys) == 0 {
			return nil // not a vatcar workload
		}
		sort.Strings(keys)
		add(SeverityWarning, w.annotationField(AnnotationInject),
			"has %s but does not opt in: the webhook injects it only if its namespace is labelled %s=enabled; set %s: \"true\"",
			strings.Join(keys, ", "), LabelNamespaceInject, AnnotationInject)
	}
	if pod.Spec.HostNetwork {
		add(SeverityWarning, w.field("spec.hostNetwork"), "the pod uses the host network, so it is never injected")
		return out
	}

	t := Target{Workload: w.name, Force: true}
	if bad := inj.checkAnnotations(w, t); len(bad) > 0 {
		return append(out, bad...)
	}
	res, err := inj.Inject(pod, t)
	if err != nil {
		add(SeverityError, inj.errorField(w, err), "%v", err)
		return out
	}
	if !cfg.SkipInjectorWarnings {
		for _, msg := range res.Warnings {
			add(SeverityWarning, w.tmplPath, "%s", msg)
		}
	}
	p, err := inj.plan(pod, t)
	if err != nil { // Inject planned the same pod without an error
		add(SeverityError, inj.errorField(w, err), "%v", err)
		return out
	}
	out = append(out, inj.checkKeySecret(set, w, p)...)
	out = append(out, inj.checkService(set, w, p)...)
	out = append(out, checkImportSecrets(set, w, p)...)
	out = append(out, checkProtos(set, w, p)...)
	return out
}

// checkAnnotations reports every annotation of w that does not parse, not
// just the first: it plans the pod again without each bad annotation found,
// so it knows every annotation the injector knows.
func (inj *Injector) checkAnnotations(w *workload, t Target) []Finding {
	pod := w.pod.DeepCopy()
	var out []Finding
	for range len(pod.Annotations) + 1 {
		_, err := inj.plan(pod, t)
		var ae *AnnotationError
		if err == nil || !errors.As(err, &ae) {
			break
		}
		out = append(out, Finding{Severity: SeverityError, Object: w.id(), Field: inj.errorField(w, err), Message: err.Error()})
		if _, ok := pod.Annotations[ae.Key]; !ok {
			break // a derived value (the workload name): nothing to drop
		}
		delete(pod.Annotations, ae.Key)
	}
	return out
}

// errorField is the field an Inject error is about.
func (inj *Injector) errorField(w *workload, err error) string {
	var ae *AnnotationError
	switch {
	case errors.As(err, &ae) && strings.HasPrefix(ae.Key, "vatcar.io/"):
		return w.annotationField(ae.Key)
	case errors.Is(err, ErrNoWorkload):
		return w.annotationField(AnnotationWorkload)
	case errors.Is(err, ErrConflict):
		return w.field("spec")
	}
	return w.tmplPath
}

// checkKeySecret checks the vat key Secret the sidecar mounts.
func (inj *Injector) checkKeySecret(set *manifestSet, w *workload, p plan) []Finding {
	if p.keySecret == "" {
		return nil
	}
	field := w.annotationField(AnnotationKeySecret)
	if _, ok := w.pod.Annotations[AnnotationKeySecret]; !ok {
		field = w.annotationField(AnnotationExports) // the default name follows from the exports
	}
	sec, ok := set.secrets[objectKey{w.namespace, p.keySecret}]
	if !ok {
		ns := ""
		if w.namespace != "" {
			ns = " -n " + w.namespace
		}
		return []Finding{{Severity: SeverityWarning, Object: w.id(), Field: field, Message: fmt.Sprintf(
			"needs the vat key Secret %s with key %s, which is not in the input (the pod cannot start without it); create it with: vatcar keygen --k8s-secret %s%s | kubectl apply -f -",
			nsName(w.namespace, p.keySecret), KeySecretKey, p.keySecret, ns)}}
	}
	secID := objectID("Secret", sec.Namespace, sec.Name)
	data, ok := secretKey(sec, KeySecretKey)
	if !ok {
		return []Finding{{Severity: SeverityError, Object: secID, Field: "data[" + KeySecretKey + "]", Message: fmt.Sprintf(
			"the vat key of %s must be under the key %s, which this Secret lacks", w.id(), KeySecretKey)}}
	}
	if block, _ := pem.Decode(data); block == nil || !strings.Contains(block.Type, "PRIVATE KEY") {
		return []Finding{{Severity: SeverityError, Object: secID, Field: "data[" + KeySecretKey + "]", Message: fmt.Sprintf(
			"is not a PEM private key (the vat key of %s; vatcar keygen makes one)", w.id())}}
	}
	return nil
}

// checkService checks the Service whose DNS name is in the workload's URIs.
func (inj *Injector) checkService(set *manifestSet, w *workload, p plan) []Finding {
	if len(p.exports) == 0 {
		return nil
	}
	var out []Finding
	field := w.annotationField(AnnotationService)
	if _, ok := w.pod.Annotations[AnnotationService]; !ok {
		field = w.annotationField(AnnotationExports)
	}
	port := inj.cfg.VatPort
	var named *corev1.Service
	var selecting []string
	for _, svc := range set.services {
		if svc.Namespace != w.namespace {
			continue
		}
		if svc.Name == p.service {
			named = svc
		} else if selects(svc, w.pod.Labels) {
			selecting = append(selecting, svc.Name)
		}
	}
	if named == nil {
		msg := fmt.Sprintf("its sturdy URIs name the Service %s (port %d), which is not in the input; it must select the pods and expose port %d with targetPort %s, headless (clusterIP: None) to balance over replicas",
			nsName(w.namespace, p.service), port, port, VatPortName)
		if len(selecting) > 0 {
			msg += fmt.Sprintf("; Service %s selects the pods: name it %s or set %s: %s", strings.Join(selecting, ", "), p.service, AnnotationService, selecting[0])
		}
		return []Finding{{Severity: SeverityWarning, Object: w.id(), Field: field, Message: msg}}
	}
	svcID := objectID("Service", named.Namespace, named.Name)
	if !selects(named, w.pod.Labels) {
		out = append(out, Finding{Severity: SeverityError, Object: svcID, Field: "spec.selector", Message: fmt.Sprintf(
			"selects %s, not the pods of %s (labels %s), whose sturdy URIs name this Service", formatLabels(named.Spec.Selector), w.id(), formatLabels(w.pod.Labels))})
	}
	var ports []string
	found := false
	for i, sp := range named.Spec.Ports {
		ports = append(ports, strconv.Itoa(int(sp.Port)))
		if sp.Port != port {
			continue
		}
		found = true
		if !targetsCapTP(sp.TargetPort, port) {
			out = append(out, Finding{Severity: SeverityError, Object: svcID, Field: fmt.Sprintf("spec.ports[%d].targetPort", i), Message: fmt.Sprintf(
				"port %d targets %s, not the sidecar's CapTP port (%s, %d)", port, sp.TargetPort.String(), VatPortName, port)})
		}
		if sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP {
			out = append(out, Finding{Severity: SeverityError, Object: svcID, Field: fmt.Sprintf("spec.ports[%d].protocol", i), Message: fmt.Sprintf(
				"port %d is %s; CapTP runs over TCP", port, sp.Protocol)})
		}
	}
	if !found {
		exposes := "no port"
		if len(ports) > 0 {
			exposes = "port " + strings.Join(ports, ", ")
		}
		out = append(out, Finding{Severity: SeverityError, Object: svcID, Field: "spec.ports", Message: fmt.Sprintf(
			"exposes %s but not the CapTP port %d of %s's sturdy URIs; add {name: vatcar, port: %d, targetPort: %s}", exposes, port, w.id(), port, VatPortName)})
	}
	if named.Spec.ClusterIP != corev1.ClusterIPNone && w.kind != "Pod" {
		out = append(out, Finding{Severity: SeverityWarning, Object: svcID, Field: "spec.clusterIP", Message: fmt.Sprintf(
			"is not headless: importers reach one replica of %s per connection through the virtual IP; set clusterIP: None so that they balance calls over every replica", w.id())})
	}
	return out
}

// checkImportSecrets checks the Secrets the workload's imports name.
func checkImportSecrets(set *manifestSet, w *workload, p plan) []Finding {
	var out []Finding
	for _, im := range p.imports {
		if im.Secret == "" {
			continue
		}
		sec, ok := set.secrets[objectKey{w.namespace, im.Secret}]
		if !ok {
			out = append(out, Finding{Severity: SeverityWarning, Object: w.id(), Field: w.annotationField(AnnotationImports), Message: fmt.Sprintf(
				"import %s needs the Secret %s with key %s (a cap file), which is not in the input (the pod cannot start without it)",
				im.Name, nsName(w.namespace, im.Secret), im.SecretKey)})
			continue
		}
		secID := objectID("Secret", sec.Namespace, sec.Name)
		data, ok := secretKey(sec, im.SecretKey)
		if !ok {
			out = append(out, Finding{Severity: SeverityError, Object: secID, Field: "data[" + im.SecretKey + "]", Message: fmt.Sprintf(
				"import %s of %s reads the cap file under the key %s, which this Secret lacks", im.Name, w.id(), im.SecretKey)})
			continue
		}
		if !strings.HasPrefix(strings.TrimSpace(string(data)), "capnp://") {
			out = append(out, Finding{Severity: SeverityError, Object: secID, Field: "data[" + im.SecretKey + "]", Message: fmt.Sprintf(
				"is not a cap file (a capnp:// URI), which import %s of %s reads", im.Name, w.id())})
		}
	}
	return out
}

// checkProtos checks the ConfigMap of AnnotationProtoDescriptors.
func checkProtos(set *manifestSet, w *workload, p plan) []Finding {
	if p.protos == "" {
		return nil
	}
	cm, ok := set.configMaps[objectKey{w.namespace, p.protos}]
	if !ok {
		return []Finding{{Severity: SeverityWarning, Object: w.id(), Field: w.annotationField(AnnotationProtoDescriptors), Message: fmt.Sprintf(
			"needs the ConfigMap %s with key %s, which is not in the input (the pod cannot start without it)",
			nsName(w.namespace, p.protos), ProtoDescriptorsKey)}}
	}
	if _, ok := cm.BinaryData[ProtoDescriptorsKey]; ok {
		return nil
	}
	if _, ok := cm.Data[ProtoDescriptorsKey]; ok {
		return nil
	}
	return []Finding{{Severity: SeverityError, Object: objectID("ConfigMap", cm.Namespace, cm.Name), Field: "binaryData[" + ProtoDescriptorsKey + "]", Message: fmt.Sprintf(
		"the descriptor set of %s must be under the key %s, which this ConfigMap lacks", w.id(), ProtoDescriptorsKey)}}
}

// secretKey returns a Secret's value under key, from data or stringData.
func secretKey(sec *corev1.Secret, key string) ([]byte, bool) {
	if v, ok := sec.Data[key]; ok {
		return v, true
	}
	if v, ok := sec.StringData[key]; ok {
		return []byte(v), true
	}
	return nil, false
}

// selects reports whether svc's selector picks pods labelled labels. An
// empty selector selects nothing (a Service without one has manual
// endpoints).
func selects(svc *corev1.Service, labels map[string]string) bool {
	if len(svc.Spec.Selector) == 0 {
		return false
	}
	for k, v := range svc.Spec.Selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// targetsCapTP reports whether a Service port's targetPort reaches the
// sidecar's CapTP port: its name, its number, or unset (the port itself).
func targetsCapTP(target intstr.IntOrString, port int32) bool {
	switch {
	case target.Type == intstr.String:
		return target.StrVal == VatPortName || target.StrVal == strconv.Itoa(int(port))
	case target.IntVal == 0:
		return true
	default:
		return target.IntVal == port
	}
}

// nsName is "namespace/name", or "name" without a namespace.
func nsName(namespace, name string) string {
	if namespace == "" {
		return name
	}
	return namespace + "/" + name
}

// formatLabels prints labels as {a: b, c: d}, sorted.
func formatLabels(m map[string]string) string {
	if len(m) == 0 {
		return "{}"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + ": " + m[k]
	}
	return "{" + strings.Join(parts, ", ") + "}"
}
