package k8s

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"go/build"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	admissionregv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

const (
	chartDir = "helm/vatcar"
	// plainManifest is the chart rendered for users without Helm.
	plainManifest = "manifests/vatcar-injector.yaml"
)

// helmBinary finds helm on PATH or in $GOPATH/bin (where tools/install.sh
// puts it). Missing helm skips the test locally and fails it in CI.
func helmBinary(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("helm"); err == nil {
		return p
	}
	p := filepath.Join(build.Default.GOPATH, "bin", "helm")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("helm not found on PATH or in $GOPATH/bin; tools/install.sh installs it")
	}
	t.Skip("helm not installed (tools/install.sh installs it); CI=true makes this a failure")
	return ""
}

func helm(t *testing.T, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(helmBinary(t), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return out
}

func TestHelmLintStrict(t *testing.T) {
	for _, set := range [][]string{nil, {"--set", "certManager.enabled=true"}, {"--set", "replicaCount=1,tests.enabled=false"}, {"--set", "sidecar.cpus=2"}} {
		helm(t, append([]string{"lint", "--strict", "--kube-version", "1.31.0", chartDir}, set...)...)
	}
}

func TestHelmRejectsBadValues(t *testing.T) {
	for _, set := range []string{"injector.failurePolicy=Sometimes", "unknownKey=1", "sidecar.vatPort=70000", "sidecar.cpus=-1", "sidecar.cpus=1025", "sidecar.cpus=1.5"} {
		cmd := exec.Command(helmBinary(t), "template", "t", chartDir, "--kube-version", "1.31.0", "--set", set)
		if out, err := cmd.CombinedOutput(); err == nil {
			t.Errorf("helm template --set %s succeeded, want a schema error:\n%s", set, out)
		}
	}
}

// rendered is a chart rendering decoded strictly into k8s.io/api types.
type rendered struct {
	deployments  []appsv1.Deployment
	services     []corev1.Service
	configMaps   []corev1.ConfigMap
	secrets      []corev1.Secret
	accounts     []corev1.ServiceAccount
	pods         []corev1.Pod
	namespaces   []corev1.Namespace
	webhooks     []admissionregv1.MutatingWebhookConfiguration
	roles        []rbacv1.Role
	roleBindings []rbacv1.RoleBinding
	pdbs         []policyv1.PodDisruptionBudget
	certManager  []map[string]any // cert-manager.io objects (CRDs, not in k8s.io/api)
}

// decodeRendered decodes every document with unknown fields disallowed.
func decodeRendered(t *testing.T, out []byte) rendered {
	t.Helper()
	var r rendered
	for i, doc := range strings.Split(string(out), "\n---") {
		if strings.TrimSpace(stripYAMLComments(doc)) == "" {
			continue
		}
		var head struct{ APIVersion, Kind string }
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Fatalf("document %d: %v", i, err)
		}
		strict := func(v any) {
			if err := yaml.UnmarshalStrict([]byte(doc), v); err != nil {
				t.Fatalf("document %d (%s %s): strict decode: %v\n%s", i, head.APIVersion, head.Kind, err, doc)
			}
		}
		switch head.APIVersion + " " + head.Kind {
		case "apps/v1 Deployment":
			strict(appendNew(&r.deployments))
		case "v1 Service":
			strict(appendNew(&r.services))
		case "v1 ConfigMap":
			strict(appendNew(&r.configMaps))
		case "v1 Secret":
			strict(appendNew(&r.secrets))
		case "v1 ServiceAccount":
			strict(appendNew(&r.accounts))
		case "v1 Pod":
			strict(appendNew(&r.pods))
		case "v1 Namespace":
			strict(appendNew(&r.namespaces))
		case "admissionregistration.k8s.io/v1 MutatingWebhookConfiguration":
			strict(appendNew(&r.webhooks))
		case "rbac.authorization.k8s.io/v1 Role":
			strict(appendNew(&r.roles))
		case "rbac.authorization.k8s.io/v1 RoleBinding":
			strict(appendNew(&r.roleBindings))
		case "policy/v1 PodDisruptionBudget":
			strict(appendNew(&r.pdbs))
		case "cert-manager.io/v1 Certificate", "cert-manager.io/v1 Issuer":
			strict(appendNew(&r.certManager))
		default:
			t.Fatalf("document %d: unexpected %s %s", i, head.APIVersion, head.Kind)
		}
	}
	return r
}

func appendNew[T any](s *[]T) *T {
	*s = append(*s, *new(T))
	return &(*s)[len(*s)-1]
}

func stripYAMLComments(doc string) string {
	var keep []string
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

func TestHelmTemplateSelfSigned(t *testing.T) {
	r := decodeRendered(t, helm(t, "template", "rel", chartDir, "--namespace", "vatcar-system", "--kube-version", "1.31.0"))
	if len(r.deployments) != 1 || len(r.services) != 1 || len(r.webhooks) != 1 || len(r.secrets) != 1 ||
		len(r.configMaps) != 1 || len(r.pods) != 1 || len(r.roles) != 1 || len(r.roleBindings) != 1 || len(r.pdbs) != 1 {
		t.Fatalf("unexpected set of objects: %+v", r)
	}
	dep := r.deployments[0]
	checkInjectorDeployment(t, dep)

	// The config file is the injector's Config, read as strictly as the
	// injector reads it, with the cluster version Helm saw.
	cfg, err := ParseConfig([]byte(r.configMaps[0].Data["config.yaml"]))
	if err != nil {
		t.Fatalf("chart's config.yaml: %v", err)
	}
	if cfg.KubeVersion != "1.31" || cfg.Image != "ghcr.io/vatcar/vatcar:0.1.0" || !cfg.nativeSidecars() {
		t.Fatalf("chart's config = %+v, want kubeVersion 1.31 and the chart's image", cfg)
	}

	// The injector does not inject its own pods, even in an opted-in namespace.
	inj, _ := NewInjector(cfg)
	own := &corev1.Pod{ObjectMeta: dep.Spec.Template.ObjectMeta, Spec: dep.Spec.Template.Spec}
	res, err := inj.Inject(own, Target{NamespaceLabels: map[string]string{LabelNamespaceInject: "enabled"}})
	if err != nil || res.Injected || res.Reason != ReasonInjectorPod {
		t.Fatalf("injecting the injector's own pod: %+v, %v", res, err)
	}

	// The webhook configuration points at the Service, at the handler's paths,
	// fails open, skips the injector's pods, and trusts the chart's CA, which
	// signed the Secret's certificate for the Service's DNS name.
	mwc := r.webhooks[0]
	var paths []string
	for _, wh := range mwc.Webhooks {
		svc := wh.ClientConfig.Service
		if svc == nil || svc.Name != r.services[0].Name || svc.Namespace != "vatcar-system" || svc.Path == nil {
			t.Fatalf("webhook %s client config %+v does not point at the Service", wh.Name, wh.ClientConfig)
		}
		paths = append(paths, *svc.Path)
		if wh.FailurePolicy == nil || *wh.FailurePolicy != admissionregv1.Ignore {
			t.Errorf("webhook %s failurePolicy %v, want Ignore (fail open)", wh.Name, wh.FailurePolicy)
		}
		if wh.SideEffects == nil || *wh.SideEffects != admissionregv1.SideEffectClassNone || !slices.Equal(wh.AdmissionReviewVersions, []string{"v1"}) {
			t.Errorf("webhook %s: sideEffects %v, versions %v", wh.Name, wh.SideEffects, wh.AdmissionReviewVersions)
		}
		sel := wh.ObjectSelector
		if sel == nil || len(sel.MatchExpressions) != 1 || sel.MatchExpressions[0].Key != LabelInjector || sel.MatchExpressions[0].Operator != "DoesNotExist" {
			t.Errorf("webhook %s objectSelector %+v does not exclude %s", wh.Name, sel, LabelInjector)
		}
		verifyServing(t, wh.ClientConfig.CABundle, r.secrets[0], "rel-vatcar.vatcar-system.svc")
	}
	if !slices.Equal(paths, []string{PathInjectNamespace, PathInject}) {
		t.Fatalf("webhook paths %v, want %v", paths, []string{PathInjectNamespace, PathInject})
	}
	// The Service reaches the container's port.
	if r.services[0].Spec.Ports[0].TargetPort.StrVal != dep.Spec.Template.Spec.Containers[0].Ports[0].Name {
		t.Fatalf("service targets %v, container port is %q", r.services[0].Spec.Ports[0].TargetPort, dep.Spec.Template.Spec.Containers[0].Ports[0].Name)
	}

	// helm test: a hook pod running the self-test as the test account, which
	// may create pods.
	test := r.pods[0]
	if test.Annotations["helm.sh/hook"] != "test" || !slices.Contains(test.Spec.Containers[0].Args, "selftest") {
		t.Fatalf("test pod: annotations %v args %v", test.Annotations, test.Spec.Containers[0].Args)
	}
	if test.Spec.ServiceAccountName != r.roleBindings[0].Subjects[0].Name || !slices.Contains(r.roles[0].Rules[0].Verbs, "create") {
		t.Fatalf("test pod account %q not bound to a role that creates pods", test.Spec.ServiceAccountName)
	}
	if test.Labels[LabelInjector] != "true" {
		t.Fatalf("test pod is not marked %s, so the webhook would inject it", LabelInjector)
	}
}

// TestHelmSidecarCPUs checks that sidecar.cpus reaches the injector's
// config, from --set and from a values file, and is left out at 0.
func TestHelmSidecarCPUs(t *testing.T) {
	values := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(values, []byte("sidecar:\n  cpus: 3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want int
	}{
		{nil, 0},
		{[]string{"--set", "sidecar.cpus=2"}, 2},
		{[]string{"-f", values}, 3},
	} {
		args := append([]string{"template", "rel", chartDir, "--kube-version", "1.31.0", "--set", "tests.enabled=false"}, tc.args...)
		r := decodeRendered(t, helm(t, args...))
		data := r.configMaps[0].Data["config.yaml"]
		cfg, err := ParseConfig([]byte(data))
		if err != nil {
			t.Fatalf("%v: chart's config.yaml: %v", tc.args, err)
		}
		if cfg.CPUs != tc.want || (tc.want == 0 && strings.Contains(data, "cpus")) {
			t.Fatalf("%v: config cpus = %d, want %d\n%s", tc.args, cfg.CPUs, tc.want, data)
		}
	}
}

// checkInjectorDeployment checks the hardening of the injector's pods.
func checkInjectorDeployment(t *testing.T, dep appsv1.Deployment) {
	t.Helper()
	spec := dep.Spec.Template.Spec
	if dep.Spec.Template.Labels[LabelInjector] != "true" {
		t.Errorf("injector pods lack the %s label", LabelInjector)
	}
	if spec.SecurityContext == nil || spec.SecurityContext.RunAsNonRoot == nil || !*spec.SecurityContext.RunAsNonRoot {
		t.Errorf("injector pod not runAsNonRoot: %+v", spec.SecurityContext)
	}
	c := spec.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Errorf("injector container security context %+v", sc)
	}
	if !slices.Equal(c.Args[:2], []string{"inject", "serve"}) || c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet.Path != PathHealthz {
		t.Errorf("injector container args %v, readiness %+v", c.Args, c.ReadinessProbe)
	}
	if c.Resources.Limits.Memory().IsZero() || c.Resources.Requests.Cpu().IsZero() {
		t.Errorf("injector container resources %+v", c.Resources)
	}
}

// verifyServing checks that the Secret's certificate chains to caBundle for
// dnsName.
func verifyServing(t *testing.T, caBundle []byte, secret corev1.Secret, dnsName string) {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caBundle) {
		t.Fatalf("caBundle holds no certificate: %q", caBundle)
	}
	block, _ := pem.Decode(secret.Data["tls.crt"])
	if block == nil {
		t.Fatal("Secret tls.crt is not PEM")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: dnsName}); err != nil {
		t.Fatalf("webhook certificate does not verify for %s against the caBundle: %v", dnsName, err)
	}
	if !bytes.Equal(secret.Data["ca.crt"], caBundle) {
		t.Fatal("Secret ca.crt differs from the webhook's caBundle")
	}
}

func TestHelmTemplateCertManager(t *testing.T) {
	r := decodeRendered(t, helm(t, "template", "rel", chartDir, "--namespace", "vatcar-system",
		"--kube-version", "1.28.3", "--set", "certManager.enabled=true,replicaCount=1,tests.enabled=false"))
	if len(r.secrets) != 0 || len(r.pdbs) != 0 || len(r.pods) != 0 || len(r.roles) != 0 {
		t.Fatalf("with cert-manager, one replica and no tests: secrets %d, pdbs %d, pods %d, roles %d; want none",
			len(r.secrets), len(r.pdbs), len(r.pods), len(r.roles))
	}
	if len(r.certManager) != 2 {
		t.Fatalf("want an Issuer and a Certificate, got %d cert-manager objects", len(r.certManager))
	}
	var certSecret string
	for _, obj := range r.certManager {
		if obj["kind"] == "Certificate" {
			spec, _ := obj["spec"].(map[string]any)
			certSecret, _ = spec["secretName"].(string)
		}
	}
	mounted := r.deployments[0].Spec.Template.Spec.Volumes[0].Secret
	if mounted == nil || certSecret == "" || mounted.SecretName != certSecret {
		t.Fatalf("cert-manager writes %q but the injector mounts %+v", certSecret, mounted)
	}
	mwc := r.webhooks[0]
	if mwc.Annotations["cert-manager.io/inject-ca-from"] != "vatcar-system/rel-vatcar" {
		t.Fatalf("webhook annotations %v, want cert-manager's CA injection", mwc.Annotations)
	}
	for _, wh := range mwc.Webhooks {
		if len(wh.ClientConfig.CABundle) != 0 {
			t.Fatalf("webhook %s has a caBundle; cert-manager injects it", wh.Name)
		}
	}
	cfg, err := ParseConfig([]byte(r.configMaps[0].Data["config.yaml"]))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.nativeSidecars() {
		t.Fatalf("on Kubernetes 1.28 the config %+v asks for native sidecars", cfg)
	}
}

// TestPlainManifestsAreCurrent checks that manifests/ holds the chart
// rendered for users without Helm (-update rewrites it).
func TestPlainManifestsAreCurrent(t *testing.T) {
	out := helm(t, "template", "vatcar", chartDir, "--namespace", "vatcar-system", "--kube-version", "1.29.0",
		"--set", "certManager.enabled=true,tests.enabled=false")
	want := append([]byte(plainHeader), out...)
	if *update {
		if err := os.WriteFile(plainManifest, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(plainManifest)
	if err != nil {
		t.Fatalf("%v (go test ./k8s -run TestPlainManifestsAreCurrent -update writes it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is not the current chart rendering; rerun with -update", plainManifest)
	}
	decodeRendered(t, got)
}

const plainHeader = `# The vatcar sidecar injector for users without Helm: the chart in
# k8s/helm/vatcar rendered with cert-manager for the webhook certificate, for
# namespace vatcar-system and Kubernetes >= 1.29 (native sidecars). Generated by
# "go test ./k8s -run TestPlainManifestsAreCurrent -update"; do not edit.
# See k8s/README.md for installing without cert-manager.
apiVersion: v1
kind: Namespace
metadata:
  name: vatcar-system
  labels:
    vatcar.io/inject: disabled
`

// TestHelmPodsAreRestricted: the injector's pods and the helm test pod pass
// PodSecurity "restricted", so the chart installs and tests in a namespace
// that enforces it (the self-test's dry-run pod: TestSelfTestPodIsRestricted).
func TestHelmPodsAreRestricted(t *testing.T) {
	r := decodeRendered(t, helm(t, "template", "rel", chartDir, "--namespace", "vatcar-system", "--kube-version", "1.31.0"))
	if len(r.deployments) != 1 || len(r.pods) != 1 {
		t.Fatalf("rendered %d deployments and %d pods, want one each", len(r.deployments), len(r.pods))
	}
	injector := &corev1.Pod{ObjectMeta: r.deployments[0].Spec.Template.ObjectMeta, Spec: r.deployments[0].Spec.Template.Spec}
	for _, pod := range []*corev1.Pod{injector, &r.pods[0]} {
		if v := restrictedViolations(pod); v != nil {
			t.Errorf("pod %s violates restricted: %v", pod.Name, v)
		}
	}
}

// TestHelmTemplateStableWithExistingSecret: with tls.existingSecret and
// tls.caBundle the chart renders no key material, so two renders are the
// same (GitOps), the webhooks carry the given CA and the injector and the
// helm test mount the given Secret. One of the two alone is an error.
func TestHelmTemplateStableWithExistingSecret(t *testing.T) {
	args := []string{"template", "rel", chartDir, "--namespace", "vatcar-system", "--kube-version", "1.31.0",
		"--set", "tls.existingSecret=my-webhook-tls", "--set", "tls.caBundle=Q0EgUEVNCg=="}
	first, second := helm(t, args...), helm(t, args...)
	if !bytes.Equal(first, second) {
		t.Fatal("two renders with tls.existingSecret differ")
	}
	r := decodeRendered(t, first)
	for _, s := range r.secrets {
		t.Errorf("rendered Secret %s, want none (the user's %s)", s.Name, "my-webhook-tls")
	}
	for _, w := range r.webhooks {
		for _, h := range w.Webhooks {
			if string(h.ClientConfig.CABundle) != "CA PEM\n" {
				t.Errorf("webhook %s caBundle %q, want tls.caBundle's", h.Name, h.ClientConfig.CABundle)
			}
		}
	}
	mounts := 0
	for _, spec := range []corev1.PodSpec{r.deployments[0].Spec.Template.Spec, r.pods[0].Spec} {
		for _, v := range spec.Volumes {
			if v.Secret != nil && v.Secret.SecretName == "my-webhook-tls" {
				mounts++
			}
		}
	}
	if mounts != 2 {
		t.Errorf("%d pods mount my-webhook-tls, want the injector and the helm test", mounts)
	}
	// Without it, each render makes a new CA: documented in values.yaml.
	for _, set := range []string{"tls.existingSecret=x", "tls.caBundle=Q0EK"} {
		cmd := exec.Command(helmBinary(t), "template", "rel", chartDir, "--kube-version", "1.31.0", "--set", set)
		if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "needs tls.") {
			t.Errorf("--set %s alone: %v, want an error saying what else it needs:\n%s", set, err, out)
		}
	}
}

// TestHelmNotesSayHowToGetURIs: NOTES.txt tells how to get a workload's
// sturdy URIs from its distroless sidecar: exec the binary where the image
// has it, with the key where the injector mounts it (helm lint renders the
// template; this pins the commands to the injector's names).
func TestHelmNotesSayHowToGetURIs(t *testing.T) {
	notes, err := os.ReadFile(filepath.Join(chartDir, "templates", "NOTES.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"exec deploy/WORKLOAD -c " + SidecarName + " -- " + SidecarBinary + " uri",
		"--secret-key-file " + KeyDir + "/" + KeySecretKey,
		"-c " + SidecarName + " -- " + SidecarBinary + " ctl list-exports --show-uris",
		"vatcar keygen --k8s-secret WORKLOAD-vatcar-key",
		"vatcar check -f",
	} {
		if !strings.Contains(string(notes), want) {
			t.Errorf("NOTES.txt lacks %q", want)
		}
	}
}

// TestHelmSidecarHealthPort checks that sidecar.healthPort reaches the
// injector's config, and that the old name, sidecar.adminPort, still does.
func TestHelmSidecarHealthPort(t *testing.T) {
	for _, tc := range []struct {
		set  string
		want int32
	}{
		{"tests.enabled=false", DefaultHealthPort},
		{"sidecar.healthPort=9001", 9001},
		{"sidecar.adminPort=9002", 9002},
		{"sidecar.adminAddress=127.0.0.1", DefaultHealthPort},
	} {
		r := decodeRendered(t, helm(t, "template", "rel", chartDir, "--kube-version", "1.31.0", "--set", "tests.enabled=false", "--set", tc.set))
		cfg, err := ParseConfig([]byte(r.configMaps[0].Data["config.yaml"]))
		if err != nil {
			t.Fatalf("--set %s: chart's config.yaml: %v", tc.set, err)
		}
		if got := cfg.withDefaults(); got.HealthPort != tc.want || got.HealthAddress != DefaultHealthAddress {
			t.Errorf("--set %s: health %s:%d, want %s:%d", tc.set, got.HealthAddress, got.HealthPort, DefaultHealthAddress, tc.want)
		}
	}
}
