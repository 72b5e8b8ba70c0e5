package k8s

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Injector adds the vatcar sidecar to pods. It holds a validated Config and
// nothing else; it is safe for concurrent use.
type Injector struct {
	cfg Config // with defaults applied
}

// NewInjector validates cfg and returns an Injector for it.
func NewInjector(cfg Config) (*Injector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Injector{cfg: cfg.withDefaults()}, nil
}

// Target is what the injector knows about a pod beyond the pod itself. The
// pod's namespace is not needed: the sidecar reads it from the downward API.
type Target struct {
	// NamespaceLabels are the labels of the pod's namespace; nil: none.
	NamespaceLabels map[string]string
	// Workload names the pod's workload (Deployment, StatefulSet, ...) when
	// the caller knows it. The pod's vatcar.io/workload annotation wins over
	// it. Empty: the name of the pod's controller (see controllerWorkload:
	// a Deployment's for its ReplicaSet's pods, a CronJob's for its Jobs'),
	// else its generateName (less a pod-template-hash), else its name.
	Workload string
	// Force injects pods that did not opt in (as `vatcar inject -f` does).
	// Opt-outs still win.
	Force bool
}

// Result is the outcome of Inject.
type Result struct {
	// Pod is the mutated copy of the pod, or an unchanged copy when Injected
	// is false. Never nil.
	Pod *corev1.Pod
	// Injected reports whether the sidecar was added.
	Injected bool
	// Reason says why the pod was left alone when Injected is false.
	Reason string
	// Warnings are notes for the user (e.g. a Job with a regular sidecar).
	Warnings []string
}

// Reasons a pod is left alone.
const (
	ReasonInjectorPod     = "the injector's own pod"
	ReasonPodOptOut       = "opted out by pod annotation " + AnnotationInject
	ReasonNamespaceOptOut = "opted out by namespace label " + LabelNamespaceInject
	ReasonHostNetwork     = "pod uses the host network"
	ReasonInjected        = "already injected"
	ReasonNotRequested    = "injection not requested"
)

// Inject returns pod with the sidecar added when the pod opted in (or
// t.Force) and nothing opted out. It is a pure function of its arguments and
// the Injector's config: pod is not modified, and injecting an injected pod
// changes nothing. Errors wrap ErrBadAnnotation, ErrConflict or ErrNoWorkload.
func (inj *Injector) Inject(pod *corev1.Pod, t Target) (Result, error) {
	out := pod.DeepCopy()
	res := Result{Pod: out}
	reason, want, err := decide(out, t)
	if err != nil || !want {
		res.Reason = reason
		return res, err
	}
	if err := inj.mutate(out, t, &res); err != nil {
		return Result{Pod: pod.DeepCopy()}, err
	}
	res.Injected = true
	return res, nil
}

// Patch is Inject expressed as an RFC 6902 JSON patch against pod, as an
// admission webhook answers. The patch is nil when nothing changed.
func (inj *Injector) Patch(pod *corev1.Pod, t Target) ([]byte, Result, error) {
	ops, res, err := inj.patchOps(pod, t)
	if err != nil || len(ops) == 0 {
		return nil, res, err
	}
	patch, err := json.Marshal(ops)
	if err != nil {
		return nil, res, fmt.Errorf("encode patch: %w", err)
	}
	return patch, res, nil
}

// patchOps is Patch before encoding.
func (inj *Injector) patchOps(pod *corev1.Pod, t Target) ([]Op, Result, error) {
	res, err := inj.Inject(pod, t)
	if err != nil || !res.Injected {
		return nil, res, err
	}
	before, err := toJSONValue(pod)
	if err != nil {
		return nil, res, err
	}
	after, err := toJSONValue(res.Pod)
	if err != nil {
		return nil, res, err
	}
	return Diff(before, after), res, nil
}

// decide reports whether pod should be injected, and why not.
func decide(pod *corev1.Pod, t Target) (reason string, want bool, err error) {
	if _, ok := pod.Labels[LabelInjector]; ok {
		return ReasonInjectorPod, false, nil
	}
	if injected(&pod.Spec) {
		return ReasonInjected, false, nil
	}
	podSays, podSet := pod.Annotations[AnnotationInject]
	var podOn bool
	if podSet {
		podOn, err = parseSwitch(AnnotationInject, podSays)
		if err != nil {
			return "", false, err
		}
		if !podOn {
			return ReasonPodOptOut, false, nil
		}
	}
	nsOn := false
	if v, ok := t.NamespaceLabels[LabelNamespaceInject]; ok {
		on, err := parseSwitch("namespace label "+LabelNamespaceInject, v)
		if err != nil {
			return "", false, err
		}
		if !on {
			return ReasonNamespaceOptOut, false, nil
		}
		nsOn = true
	}
	if !podOn && !nsOn && !t.Force {
		return ReasonNotRequested, false, nil
	}
	if pod.Spec.HostNetwork {
		return ReasonHostNetwork, false, nil
	}
	return "", true, nil
}

// injected reports whether spec already has the sidecar.
func injected(spec *corev1.PodSpec) bool {
	for _, cs := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
		for _, c := range cs {
			if c.Name == SidecarName {
				return true
			}
		}
	}
	return false
}

// workloadName finds the name of pod's workload.
func workloadName(pod *corev1.Pod, t Target) (string, error) {
	name := pod.Annotations[AnnotationWorkload]
	if name == "" {
		name = t.Workload
	}
	if name == "" {
		name = controllerWorkload(pod)
	}
	if name == "" && pod.GenerateName != "" {
		name = strings.TrimSuffix(pod.GenerateName, "-")
		if h := pod.Labels["pod-template-hash"]; h != "" {
			name = strings.TrimSuffix(name, "-"+h)
		}
	}
	if name == "" {
		name = pod.Name
	}
	if name == "" {
		return "", fmt.Errorf("%w: set the %s annotation", ErrNoWorkload, AnnotationWorkload)
	}
	if !dnsRE.MatchString(name) {
		return "", badAnnotation(AnnotationWorkload, "%q is not a DNS label", name)
	}
	return name, nil
}

// cronJobSuffixRE is what the CronJob controller appends to a CronJob's
// name to name each of its Jobs: the scheduled time in minutes since the
// epoch (8 digits from 1989 to 2160).
var cronJobSuffixRE = regexp.MustCompile(`-[0-9]{8,}$`)

// controllerWorkload names the workload of pod's controller (the owner
// reference with controller: true) as the user wrote it: a ReplicaSet's
// name less the pod's pod-template-hash (the Deployment), a Job's name less
// a CronJob's schedule suffix (the CronJob: every run of it then shares one
// key Secret and Service; a Job of one's own whose name ends in 8 or more
// digits loses them too), any other controller's own name (StatefulSet,
// DaemonSet, a ReplicaSet or Job of one's own). Empty: no controller.
func controllerWorkload(pod *corev1.Pod) string {
	for _, ref := range pod.OwnerReferences {
		if ref.Controller == nil || !*ref.Controller || ref.Name == "" {
			continue
		}
		name := ref.Name
		switch ref.Kind {
		case "ReplicaSet":
			if h := pod.Labels["pod-template-hash"]; h != "" {
				name = strings.TrimSuffix(name, "-"+h)
			}
		case "Job":
			name = cronJobSuffixRE.ReplaceAllString(name, "")
		}
		return name
	}
	return ""
}

// toJSONValue encodes v and decodes it as generic JSON (numbers kept exact).
func toJSONValue(v any) (any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode pod: %w", err)
	}
	return decodeJSONValue(b)
}
