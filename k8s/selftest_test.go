package k8s

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// fakeAPIServer stands in for the Kubernetes API server's pod creation: it
// sends each pod through the real webhook over HTTPS and applies its patch.
// With webhook nil it admits pods unchanged (a webhook that failed open).
func fakeAPIServer(t *testing.T, w *webhook, token string) *httptest.Server {
	t.Helper()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			http.Error(rw, "unauthorized", http.StatusUnauthorized)
			return
		}
		if r.Method != http.MethodPost || r.URL.Path != "/api/v1/namespaces/shop/pods" || r.URL.Query().Get("dryRun") != "All" {
			http.Error(rw, "want a dry-run pod creation in shop, got "+r.Method+" "+r.URL.String(), http.StatusBadRequest)
			return
		}
		raw, _ := io.ReadAll(r.Body)
		var pod corev1.Pod
		if err := json.Unmarshal(raw, &pod); err != nil {
			http.Error(rw, err.Error(), http.StatusBadRequest)
			return
		}
		if w != nil {
			body, _ := json.Marshal(admissionv1.AdmissionReview{
				TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
				Request: &admissionv1.AdmissionRequest{
					UID: "selftest", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
					Namespace: "shop", Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: raw},
				},
			})
			resp, err := w.client.Post(w.url+PathInject, "application/json", bytes.NewReader(body))
			if err != nil {
				http.Error(rw, err.Error(), http.StatusInternalServerError)
				return
			}
			var review admissionv1.AdmissionReview
			err = json.NewDecoder(resp.Body).Decode(&review)
			resp.Body.Close()
			if err != nil || review.Response == nil || !review.Response.Allowed {
				http.Error(rw, "webhook denied or failed", http.StatusForbidden)
				return
			}
			var ops []Op
			if err := json.Unmarshal(review.Response.Patch, &ops); err != nil {
				http.Error(rw, err.Error(), http.StatusInternalServerError)
				return
			}
			doc, _ := toJSONValue(&pod)
			patched, err := Apply(doc, ops)
			if err != nil {
				http.Error(rw, err.Error(), http.StatusInternalServerError)
				return
			}
			raw, _ = json.Marshal(patched)
		}
		// The namespace enforces PodSecurity "restricted", as the API
		// server's admission does after the webhooks.
		var final corev1.Pod
		if err := json.Unmarshal(raw, &final); err != nil {
			http.Error(rw, err.Error(), http.StatusInternalServerError)
			return
		}
		if v := restrictedViolations(&final); v != nil {
			http.Error(rw, fmt.Sprintf(`pods is forbidden: violates PodSecurity "restricted:latest": %v`, v), http.StatusForbidden)
			return
		}
		rw.Header().Set("Content-Type", "application/json")
		rw.WriteHeader(http.StatusCreated)
		_, _ = rw.Write(raw)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// credentials writes a service account's files for api.
func credentials(t *testing.T, api *httptest.Server, token string) SelfTestConfig {
	t.Helper()
	dir := t.TempDir()
	cfg := SelfTestConfig{
		APIServer:     api.URL,
		TokenFile:     filepath.Join(dir, "token"),
		CAFile:        filepath.Join(dir, "ca.crt"),
		NamespaceFile: filepath.Join(dir, "namespace"),
	}
	for path, data := range map[string][]byte{
		cfg.TokenFile: []byte(token + "\n"), cfg.CAFile: pemCert(api.Certificate().Raw), cfg.NamespaceFile: []byte("shop"),
	} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return cfg
}

func TestSelfTestPassesThroughTheWebhook(t *testing.T) {
	w := startWebhook(t, Config{})
	api := fakeAPIServer(t, w, "s3cret")
	defer api.Client().CloseIdleConnections()
	if err := SelfTest(context.Background(), credentials(t, api, "s3cret")); err != nil {
		t.Fatalf("SelfTest: %v", err)
	}
}

func TestSelfTestFailsWhenNotInjected(t *testing.T) {
	api := fakeAPIServer(t, nil, "s3cret")
	err := SelfTest(context.Background(), credentials(t, api, "s3cret"))
	if !errors.Is(err, ErrNotInjected) {
		t.Fatalf("SelfTest without a webhook = %v, want ErrNotInjected", err)
	}
}

func TestSelfTestReportsAPIErrors(t *testing.T) {
	api := fakeAPIServer(t, nil, "s3cret")
	err := SelfTest(context.Background(), credentials(t, api, "wrong"))
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("401")) {
		t.Fatalf("SelfTest with a bad token = %v, want the 401", err)
	}
}

// restrictedViolations lists how pod breaks the Pod Security Standard
// "restricted" (the checks of k8s.io/pod-security-admission's restricted
// policy at latest that a pod of the injector can break), in the API
// server's words; none: nil.
func restrictedViolations(pod *corev1.Pod) []string {
	var out []string
	psc := pod.Spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	if pod.Spec.HostNetwork || pod.Spec.HostPID || pod.Spec.HostIPC {
		out = append(out, "host namespaces")
	}
	if psc.RunAsUser != nil && *psc.RunAsUser == 0 {
		out = append(out, "runAsUser=0")
	}
	for _, v := range pod.Spec.Volumes {
		if v.HostPath != nil {
			out = append(out, "restricted volume types")
		}
	}
	var all []corev1.Container
	all = append(all, pod.Spec.InitContainers...)
	all = append(all, pod.Spec.Containers...)
	for _, c := range all {
		sc := c.SecurityContext
		if sc == nil {
			sc = &corev1.SecurityContext{}
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			out = append(out, c.Name+": allowPrivilegeEscalation != false")
		}
		if sc.Privileged != nil && *sc.Privileged {
			out = append(out, c.Name+": privileged")
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			out = append(out, c.Name+": unrestricted capabilities (drop ALL)")
		} else {
			for _, add := range sc.Capabilities.Add {
				if add != "NET_BIND_SERVICE" {
					out = append(out, c.Name+": unrestricted capabilities (add "+string(add)+")")
				}
			}
		}
		nonRoot := psc.RunAsNonRoot != nil && *psc.RunAsNonRoot
		if sc.RunAsNonRoot != nil {
			nonRoot = *sc.RunAsNonRoot
		}
		if !nonRoot {
			out = append(out, c.Name+": runAsNonRoot != true")
		}
		if sc.RunAsUser != nil && *sc.RunAsUser == 0 {
			out = append(out, c.Name+": runAsUser=0")
		}
		seccomp := psc.SeccompProfile
		if sc.SeccompProfile != nil {
			seccomp = sc.SeccompProfile
		}
		if seccomp == nil || (seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault && seccomp.Type != corev1.SeccompProfileTypeLocalhost) {
			out = append(out, c.Name+": seccompProfile")
		}
	}
	return out
}

// TestSelfTestPodIsRestricted: the self-test's dry-run pod, before and after
// injection (native sidecar and regular container), passes PodSecurity
// "restricted", so helm test works in a namespace that enforces it.
func TestSelfTestPodIsRestricted(t *testing.T) {
	pod := selfTestPod("registry.k8s.io/pause:3.10")
	if v := restrictedViolations(pod); v != nil {
		t.Errorf("the self-test pod violates restricted: %v", v)
	}
	for _, kube := range []string{"", "1.28"} {
		inj, err := NewInjector(Config{KubeVersion: kube})
		if err != nil {
			t.Fatal(err)
		}
		res, err := inj.Inject(pod, Target{})
		if err != nil || !res.Injected {
			t.Fatalf("kube %q: inject: %v, injected %v", kube, err, res.Injected)
		}
		if v := restrictedViolations(res.Pod); v != nil {
			t.Errorf("kube %q: the injected self-test pod violates restricted: %v", kube, v)
		}
	}
	bare := pod.DeepCopy()
	bare.Spec.SecurityContext, bare.Spec.Containers[0].SecurityContext = nil, nil
	if v := restrictedViolations(bare); len(v) < 3 {
		t.Errorf("a pod without security contexts: violations %v, want allowPrivilegeEscalation, capabilities, runAsNonRoot, seccompProfile", v)
	}
}
