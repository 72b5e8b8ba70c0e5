package k8s

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestParseCPUs(t *testing.T) {
	tests := []struct {
		in   string
		want int
		ok   bool
	}{
		{"1", 1, true},
		{" 2 ", 2, true},
		{"1024", MaxCPUs, true},
		{"0", 0, false},
		{"-1", 0, false},
		{"1025", 0, false},
		{"0.5", 0, false},
		{"500m", 0, false},
		{"", 0, false},
		{"two", 0, false},
	}
	for _, tc := range tests {
		got, err := parseCPUs(AnnotationCPUs, tc.in)
		if tc.ok && (err != nil || got != tc.want) {
			t.Errorf("parseCPUs(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
		if !tc.ok {
			if !errors.Is(err, ErrBadAnnotation) {
				t.Errorf("parseCPUs(%q) error = %v, want ErrBadAnnotation", tc.in, err)
			} else if msg := err.Error(); !strings.Contains(msg, AnnotationCPUs) || !strings.Contains(msg, fmt.Sprintf("%q", tc.in)) {
				t.Errorf("parseCPUs(%q) error %q does not name the annotation and the value", tc.in, msg)
			}
		}
	}
}

// TestPlanProtosAndCPUs checks which annotation or config value sets the
// sidecar's descriptor ConfigMap and CPU count.
func TestPlanProtosAndCPUs(t *testing.T) {
	tests := []struct {
		name        string
		cfg         Config
		annotations map[string]string
		protos      string
		cpus        int
		err         bool
	}{
		{name: "neither", cpus: 0},
		{name: "annotations", annotations: map[string]string{AnnotationProtoDescriptors: "app.protos", AnnotationCPUs: "3"}, protos: "app.protos", cpus: 3},
		{name: "config default", cfg: Config{CPUs: 2}, cpus: 2},
		{name: "annotation beats config", cfg: Config{CPUs: 2}, annotations: map[string]string{AnnotationCPUs: "1"}, cpus: 1},
		{name: "empty cpus", annotations: map[string]string{AnnotationCPUs: ""}, err: true},
		{name: "uppercase ConfigMap", annotations: map[string]string{AnnotationProtoDescriptors: "Protos"}, err: true},
		{name: "ConfigMap with a slash", annotations: map[string]string{AnnotationProtoDescriptors: "a/b"}, err: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			inj, err := NewInjector(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Annotations: tc.annotations}}
			p, err := inj.plan(pod, Target{})
			if tc.err {
				if !errors.Is(err, ErrBadAnnotation) {
					t.Fatalf("plan: err = %v, want ErrBadAnnotation", err)
				}
				return
			}
			if err != nil || p.protos != tc.protos || p.cpus != tc.cpus {
				t.Fatalf("plan = protos %q cpus %d, %v; want %q, %d", p.protos, p.cpus, err, tc.protos, tc.cpus)
			}
		})
	}
}

func TestParseExports(t *testing.T) {
	spec := &corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Ports: []corev1.ContainerPort{{Name: "grpc", ContainerPort: 50051}}}}}
	tests := []struct {
		in   string
		want []Export
		ok   bool
	}{
		{"", nil, true},
		{"a=1", []Export{{"a", 1}}, true},
		{" a = grpc , b=65535;c=2\n", []Export{{"a", 50051}, {"b", 65535}, {"c", 2}}, true},
		{"a", nil, false},
		{"a=", nil, false},
		{"=1", nil, false},
		{"a=0", nil, false},
		{"a=65536", nil, false},
		{"a=nope", nil, false},
		{"a=1,a=2", nil, false},
		{"bad/name=1", nil, false},
		{"-a=1", nil, false},
	}
	for _, tc := range tests {
		got, err := parseExports(tc.in, spec)
		if tc.ok && (err != nil || !reflect.DeepEqual(got, tc.want)) {
			t.Errorf("parseExports(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
		if !tc.ok && !errors.Is(err, ErrBadAnnotation) {
			t.Errorf("parseExports(%q) error = %v, want ErrBadAnnotation", tc.in, err)
		}
	}
}

func TestParseImports(t *testing.T) {
	uri := "capnp://sha-256:AbC_-x@greeter.demo.svc:7440/c2VydmljZQ"
	tests := []struct {
		in   string
		want []Import
		ok   bool
	}{
		{"", nil, true},
		{"g=" + uri + ",port=9001", []Import{{Name: "g", URI: uri, Port: 9001}}, true},
		{"g=secret:caps/g.cap,port=1; h=secret:other.caps/h_1.cap,port=2\n", []Import{
			{Name: "g", Secret: "caps", SecretKey: "g.cap", Port: 1},
			{Name: "h", Secret: "other.caps", SecretKey: "h_1.cap", Port: 2}}, true},
		{"g=" + uri, nil, false},
		{"g=" + uri + ",port=0", nil, false},
		{"g=" + uri + ",port=x", nil, false},
		{"g=" + uri + ",listen=1", nil, false},
		{"g=http://x,port=1", nil, false},
		{"g=secret:caps,port=1", nil, false},
		{"g=secret:Caps/k,port=1", nil, false},
		{"g=secret:caps/k/l,port=1", nil, false},
		{"g", nil, false},
		{"g=secret:a/b,port=1;g=secret:a/c,port=2", nil, false},
	}
	for _, tc := range tests {
		got, err := parseImports(tc.in)
		if tc.ok && (err != nil || !reflect.DeepEqual(got, tc.want)) {
			t.Errorf("parseImports(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
		if !tc.ok && !errors.Is(err, ErrBadAnnotation) {
			t.Errorf("parseImports(%q) error = %v, want ErrBadAnnotation", tc.in, err)
		}
	}
}

func TestDecide(t *testing.T) {
	on := map[string]string{LabelNamespaceInject: "enabled"}
	off := map[string]string{LabelNamespaceInject: "disabled"}
	tests := []struct {
		name        string
		annotations map[string]string
		labels      map[string]string
		t           Target
		hostNetwork bool
		want        bool
		reason      string
		err         bool
	}{
		{name: "nothing", reason: ReasonNotRequested},
		{name: "pod opts in", annotations: map[string]string{AnnotationInject: "true"}, want: true},
		{name: "pod opts in with enabled", annotations: map[string]string{AnnotationInject: "enabled"}, want: true},
		{name: "namespace opts in", t: Target{NamespaceLabels: on}, want: true},
		{name: "force", t: Target{Force: true}, want: true},
		{name: "pod opt-out beats namespace", annotations: map[string]string{AnnotationInject: "false"}, t: Target{NamespaceLabels: on}, reason: ReasonPodOptOut},
		{name: "pod opt-out beats force", annotations: map[string]string{AnnotationInject: "false"}, t: Target{Force: true}, reason: ReasonPodOptOut},
		{name: "namespace opt-out beats pod", annotations: map[string]string{AnnotationInject: "true"}, t: Target{NamespaceLabels: off}, reason: ReasonNamespaceOptOut},
		{name: "injector pod", labels: map[string]string{LabelInjector: "true"}, t: Target{Force: true}, reason: ReasonInjectorPod},
		{name: "host network", hostNetwork: true, t: Target{Force: true}, reason: ReasonHostNetwork},
		{name: "bad pod value", annotations: map[string]string{AnnotationInject: "yes please"}, err: true},
		{name: "bad namespace value", t: Target{NamespaceLabels: map[string]string{LabelNamespaceInject: "on"}}, err: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: "p", Annotations: tc.annotations, Labels: tc.labels},
				Spec:       corev1.PodSpec{HostNetwork: tc.hostNetwork, Containers: []corev1.Container{{Name: "app", Image: "x"}}},
			}
			reason, want, err := decide(pod, tc.t)
			if tc.err {
				if !errors.Is(err, ErrBadAnnotation) {
					t.Fatalf("err = %v, want ErrBadAnnotation", err)
				}
				return
			}
			if err != nil || want != tc.want || reason != tc.reason {
				t.Fatalf("decide = %q, %v, %v; want %q, %v", reason, want, err, tc.reason, tc.want)
			}
		})
	}
}

// owner is a controller owner reference.
func owner(kind, name string) []metav1.OwnerReference {
	yes := true
	return []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: kind, Name: name, Controller: &yes}}
}

func TestWorkloadName(t *testing.T) {
	tests := []struct {
		name string
		meta metav1.ObjectMeta
		t    Target
		want string
	}{
		{"annotation wins", metav1.ObjectMeta{Name: "p", Annotations: map[string]string{AnnotationWorkload: "w"}}, Target{Workload: "t"}, "w"},
		{"target", metav1.ObjectMeta{Name: "p"}, Target{Workload: "t"}, "t"},
		{"deployment pod", metav1.ObjectMeta{GenerateName: "web-5d8f7c9b6-", Labels: map[string]string{"pod-template-hash": "5d8f7c9b6"}}, Target{}, "web"},
		{"generateName only", metav1.ObjectMeta{GenerateName: "db-"}, Target{}, "db"},
		// What the webhook sees: the controller's owner reference.
		{"deployment pod (owner)", metav1.ObjectMeta{GenerateName: "web-5d8f7c9b6-", Labels: map[string]string{"pod-template-hash": "5d8f7c9b6"},
			OwnerReferences: owner("ReplicaSet", "web-5d8f7c9b6")}, Target{}, "web"},
		{"statefulset pod", metav1.ObjectMeta{Name: "db-0", OwnerReferences: owner("StatefulSet", "db")}, Target{}, "db"},
		{"daemonset pod", metav1.ObjectMeta{GenerateName: "agent-", OwnerReferences: owner("DaemonSet", "agent")}, Target{}, "agent"},
		{"job pod", metav1.ObjectMeta{GenerateName: "report-", OwnerReferences: owner("Job", "report")}, Target{}, "report"},
		{"cronjob pod", metav1.ObjectMeta{GenerateName: "tick-29941944-", Labels: map[string]string{"batch.kubernetes.io/job-name": "tick-29941944"},
			OwnerReferences: owner("Job", "tick-29941944")}, Target{}, "tick"},
		{"job with a short number", metav1.ObjectMeta{GenerateName: "migrate-2-", OwnerReferences: owner("Job", "migrate-2")}, Target{}, "migrate-2"},
		{"not the controller", metav1.ObjectMeta{Name: "p", OwnerReferences: []metav1.OwnerReference{{Kind: "Job", Name: "other"}}}, Target{}, "p"},
		{"annotation wins over owner", metav1.ObjectMeta{Name: "db-0", Annotations: map[string]string{AnnotationWorkload: "w"}, OwnerReferences: owner("StatefulSet", "db")}, Target{}, "w"},
		{"named pod", metav1.ObjectMeta{Name: "solo"}, Target{}, "solo"},
	}
	for _, tc := range tests {
		got, err := workloadName(&corev1.Pod{ObjectMeta: tc.meta}, tc.t)
		if err != nil || got != tc.want {
			t.Errorf("%s: workloadName = %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
	if _, err := workloadName(&corev1.Pod{}, Target{}); !errors.Is(err, ErrNoWorkload) {
		t.Errorf("no name at all: err = %v, want ErrNoWorkload", err)
	}
	if _, err := workloadName(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "Bad_Name"}}, Target{}); !errors.Is(err, ErrBadAnnotation) {
		t.Errorf("bad name: err = %v, want ErrBadAnnotation", err)
	}
}

func TestInjectDoesNotModifyItsInput(t *testing.T) {
	inj, _ := NewInjector(Config{})
	pod := testPod(map[string]string{AnnotationInject: "true", AnnotationExports: "web=grpc"}, nil)
	before := pod.DeepCopy()
	res, err := inj.Inject(pod, Target{})
	if err != nil || !res.Injected {
		t.Fatalf("Inject = %+v, %v", res, err)
	}
	if !reflect.DeepEqual(pod, before) {
		t.Fatal("Inject modified the pod it was given")
	}
}
