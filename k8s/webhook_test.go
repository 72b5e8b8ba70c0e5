package k8s

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/vatcar/vatcar/internal/probe"
)

// webhook is a Server on a real TLS listener on 127.0.0.1.
type webhook struct {
	url    string
	addr   string
	client *http.Client
	pki    *testPKI
	logs   *syncBuffer
}

// syncBuffer is a bytes.Buffer safe for concurrent use, for logs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startWebhook(t *testing.T, cfg Config) *webhook {
	t.Helper()
	inj, err := NewInjector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pki := newTestPKI(t)
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := NewServer(NewHandler(inj, log), ServerConfig{
		CertFile: pki.certFile, KeyFile: pki.keyFile, ReloadInterval: 20 * time.Millisecond, Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.pool, ServerName: "127.0.0.1"}}
	w := &webhook{url: "https://" + ln.Addr().String(), addr: ln.Addr().String(), client: &http.Client{Transport: tr, Timeout: 10 * time.Second}, pki: pki, logs: logs}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve returned %v, want nil after cancel", err)
		}
	})
	return w
}

func (w *webhook) post(t *testing.T, path, contentType string, body []byte) (int, []byte) {
	t.Helper()
	resp, err := w.client.Post(w.url+path, contentType, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// review posts an AdmissionReview for obj and returns the response.
func (w *webhook) review(t *testing.T, path string, req admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	t.Helper()
	body, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request:  &req,
	})
	if err != nil {
		t.Fatal(err)
	}
	code, out := w.post(t, path, "application/json", body)
	if code != http.StatusOK {
		t.Fatalf("POST %s: status %d: %s", path, code, out)
	}
	var got admissionv1.AdmissionReview
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("decode response: %v: %s", err, out)
	}
	if got.APIVersion != "admission.k8s.io/v1" || got.Kind != "AdmissionReview" || got.Response == nil {
		t.Fatalf("response is not an AdmissionReview v1 with a response: %s", out)
	}
	if got.Response.UID != req.UID {
		t.Fatalf("response uid %q, want %q", got.Response.UID, req.UID)
	}
	return got.Response
}

func podRequest(t *testing.T, pod *corev1.Pod) admissionv1.AdmissionRequest {
	t.Helper()
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	return admissionv1.AdmissionRequest{
		UID:       types.UID("uid-" + pod.GenerateName + pod.Name),
		Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
		Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
		Namespace: "shop",
		Operation: admissionv1.Create,
		Object:    runtime.RawExtension{Raw: raw},
	}
}

func testPod(annotations, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "web-5d8f7c9b6-",
			Labels:       labels,
			Annotations:  annotations,
		},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "app", Image: "example.com/web:1",
			Ports: []corev1.ContainerPort{{Name: "grpc", ContainerPort: 8080}},
		}}},
	}
}

// applyPatch applies a webhook's patch to pod the way the API server would.
func applyPatch(t *testing.T, pod *corev1.Pod, patch []byte) *corev1.Pod {
	t.Helper()
	doc, err := toJSONValue(pod)
	if err != nil {
		t.Fatal(err)
	}
	var ops []Op
	dec := json.NewDecoder(bytes.NewReader(patch))
	dec.UseNumber()
	if err := dec.Decode(&ops); err != nil {
		t.Fatalf("decode patch: %v: %s", err, patch)
	}
	out, err := Apply(doc, ops)
	if err != nil {
		t.Fatalf("apply patch: %v: %s", err, patch)
	}
	b, _ := json.Marshal(out)
	var got corev1.Pod
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	return &got
}

func TestWebhookAdmission(t *testing.T) {
	w := startWebhook(t, Config{})
	exports := map[string]string{AnnotationExports: "web=grpc"}
	optIn := map[string]string{AnnotationInject: "true", AnnotationExports: "web=grpc"}
	optOut := map[string]string{AnnotationInject: "false", AnnotationExports: "web=grpc"}
	hash := map[string]string{"pod-template-hash": "5d8f7c9b6"}
	tests := []struct {
		name      string
		path      string
		pod       *corev1.Pod
		req       func(*admissionv1.AdmissionRequest)
		wantPatch bool
		wantDeny  int32  // 0: allowed
		wantMsg   string // in the denial's message
	}{
		{name: "pod opts in", path: PathInject, pod: testPod(optIn, hash), wantPatch: true},
		{name: "namespace opts in", path: PathInjectNamespace, pod: testPod(exports, hash), wantPatch: true},
		{name: "no opt-in", path: PathInject, pod: testPod(exports, hash)},
		{name: "pod opts out of opted-in namespace", path: PathInjectNamespace, pod: testPod(optOut, hash)},
		{name: "injector's own pod", path: PathInjectNamespace, pod: testPod(optIn, map[string]string{LabelInjector: "true"})},
		{name: "bad annotation is denied", path: PathInject, pod: testPod(map[string]string{AnnotationInject: "true", AnnotationExports: "web=nope"}, nil), wantDeny: http.StatusUnprocessableEntity},
		{name: "bad inject value is denied", path: PathInject, pod: testPod(map[string]string{AnnotationInject: "maybe"}, nil), wantDeny: http.StatusUnprocessableEntity},
		{name: "bad cpus is denied", path: PathInject, pod: testPod(map[string]string{AnnotationInject: "true", AnnotationCPUs: "many"}, nil),
			wantDeny: http.StatusUnprocessableEntity, wantMsg: `vatcar.io/cpus: "many"`},
		{name: "bad descriptor ConfigMap is denied", path: PathInjectNamespace, pod: testPod(map[string]string{AnnotationProtoDescriptors: "-protos"}, nil),
			wantDeny: http.StatusUnprocessableEntity, wantMsg: `vatcar.io/proto-descriptors: "-protos"`},
		{name: "update is ignored", path: PathInject, pod: testPod(optIn, nil), req: func(r *admissionv1.AdmissionRequest) { r.Operation = admissionv1.Update }},
		{name: "other kinds are ignored", path: PathInject, pod: testPod(optIn, nil), req: func(r *admissionv1.AdmissionRequest) {
			r.Kind = metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}
		}},
		{name: "undecodable pod is denied", path: PathInject, pod: testPod(optIn, nil), req: func(r *admissionv1.AdmissionRequest) {
			r.Object.Raw = []byte(`{"spec":{"containers":5}}`)
		}, wantDeny: http.StatusBadRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := podRequest(t, tc.pod)
			if tc.req != nil {
				tc.req(&req)
			}
			resp := w.review(t, tc.path, req)
			if tc.wantDeny != 0 {
				if resp.Allowed || resp.Result == nil || resp.Result.Code != tc.wantDeny || resp.Result.Message == "" {
					t.Fatalf("got allowed=%v result=%+v, want denied with code %d and a message", resp.Allowed, resp.Result, tc.wantDeny)
				}
				if !strings.Contains(resp.Result.Message, tc.wantMsg) {
					t.Fatalf("denial message %q does not contain %q", resp.Result.Message, tc.wantMsg)
				}
				return
			}
			if !resp.Allowed {
				t.Fatalf("denied: %+v", resp.Result)
			}
			if !tc.wantPatch {
				if resp.Patch != nil || resp.PatchType != nil {
					t.Fatalf("got a patch, want none: %s", resp.Patch)
				}
				return
			}
			if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
				t.Fatalf("patchType = %v, want JSONPatch", resp.PatchType)
			}
			got := applyPatch(t, tc.pod, resp.Patch)
			if len(got.Spec.InitContainers) != 1 || got.Spec.InitContainers[0].Name != SidecarName {
				t.Fatalf("init containers after patch = %+v, want the sidecar", got.Spec.InitContainers)
			}
			sc := got.Spec.InitContainers[0]
			// The workload name comes from generateName less the pod-template-hash.
			for _, want := range []string{"--public-address=tcp:web.$(VATCAR_NAMESPACE).svc.cluster.local:7440", "--export=web=127.0.0.1:8080"} {
				if !slices.Contains(sc.Args, want) {
					t.Errorf("sidecar args %q lack %q", sc.Args, want)
				}
			}
			if got.Spec.Volumes[0].Secret == nil || got.Spec.Volumes[0].Secret.SecretName != "web-vatcar-key" {
				t.Errorf("volumes = %+v, want the web-vatcar-key Secret first", got.Spec.Volumes)
			}
			// Idempotent: the patched pod gets no second patch.
			again := w.review(t, tc.path, podRequest(t, got))
			if !again.Allowed || again.Patch != nil {
				t.Fatalf("second admission: allowed=%v patch=%s, want allowed without patch", again.Allowed, again.Patch)
			}
		})
	}
}

func TestWebhookMalformedRequests(t *testing.T) {
	w := startWebhook(t, Config{})
	valid, _ := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request:  &admissionv1.AdmissionRequest{UID: "u"},
	})
	tests := []struct {
		name, contentType string
		body              []byte
		want              int
	}{
		{"not JSON", "application/json", []byte("{not json"), http.StatusBadRequest},
		{"empty body", "application/json", nil, http.StatusBadRequest},
		{"JSON list", "application/json", []byte("[1,2]"), http.StatusBadRequest},
		{"no request", "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`), http.StatusBadRequest},
		{"no uid", "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}`), http.StatusBadRequest},
		{"v1beta1", "application/json", bytes.Replace(valid, []byte("admission.k8s.io/v1"), []byte("admission.k8s.io/v1beta1"), 1), http.StatusBadRequest},
		{"wrong content type", "text/plain", valid, http.StatusUnsupportedMediaType},
		{"too large", "application/json", append([]byte(`{"x":"`), bytes.Repeat([]byte("a"), maxReviewBytes+1)...), http.StatusRequestEntityTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, body := w.post(t, PathInject, tc.contentType, tc.body)
			if code != tc.want {
				t.Fatalf("status %d (%s), want %d", code, body, tc.want)
			}
		})
	}
	// The server is still up and answering after all of that.
	if resp := w.review(t, PathInject, podRequest(t, testPod(nil, nil))); !resp.Allowed {
		t.Fatalf("after malformed requests: %+v", resp)
	}
	resp, err := w.client.Get(w.url + PathInject)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET %s: status %d, want 405", PathInject, resp.StatusCode)
	}
}

func TestWebhookHealthz(t *testing.T) {
	w := startWebhook(t, Config{})
	resp, err := w.client.Get(w.url + PathHealthz)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != "ok" {
		t.Fatalf("GET /healthz = %d %q, want 200 ok", resp.StatusCode, body)
	}
	// internal/probe (the sidecar's and helm test's client) agrees, and trusts only the CA.
	caFile := w.pki.certFile + ".ca"
	writeFile(t, caFile, pemCert(w.pki.ca.Raw))
	if err := probe.Get(context.Background(), w.url+PathHealthz, probe.Config{CAFile: caFile}); err != nil {
		t.Fatalf("probe with the CA: %v", err)
	}
	if err := probe.Get(context.Background(), w.url+PathHealthz, probe.Config{}); err == nil {
		t.Fatal("probe without the CA succeeded, want a verification error")
	}
	if err := probe.Get(context.Background(), w.url+"/nope", probe.Config{CAFile: caFile}); !errors.Is(err, probe.ErrFailed) {
		t.Fatalf("probe of a 404 = %v, want probe.ErrFailed", err)
	}
}

func TestWebhookReloadsCertificate(t *testing.T) {
	w := startWebhook(t, Config{})
	if got := servedSerial(t, w.addr, w.pki.pool); got != 2 {
		t.Fatalf("served serial %d, want 2", got)
	}
	writeFile(t, w.pki.certFile, []byte("garbage"))
	// A broken file keeps the old certificate served.
	waitFor(t, 10*time.Second, "a failed reload to be logged", func() bool {
		return strings.Contains(w.logs.String(), "TLS certificate reload failed")
	})
	if got := servedSerial(t, w.addr, w.pki.pool); got != 2 {
		t.Fatalf("after a broken write served serial %d, want 2", got)
	}
	w.pki.issue(t, 3)
	waitFor(t, 10*time.Second, "the new certificate to be served", func() bool {
		return servedSerial(t, w.addr, w.pki.pool) == 3
	})
}

// TestWebhookNeverLogsSturdyRefs checks the security stance: an inline URI
// (a bearer secret) in an annotation reaches neither the logs nor an error.
func TestWebhookNeverLogsSturdyRefs(t *testing.T) {
	w := startWebhook(t, Config{})
	secret := "capnp://sha-256:LEAKDIGEST@greeter.demo.svc:7440/LEAKID"
	for _, imports := range []string{
		"g=" + secret + ",port=9001",       // injected
		"g=" + secret + ",port=9001,bad=1", // refused
		"g=" + secret + ",port=8080",       // clashes with the app's port
	} {
		pod := testPod(map[string]string{AnnotationInject: "true", AnnotationImports: imports}, nil)
		resp := w.review(t, PathInject, podRequest(t, pod))
		if resp.Result != nil && strings.Contains(resp.Result.Message, "LEAK") {
			t.Errorf("denial message leaks the sturdy ref: %s", resp.Result.Message)
		}
		for _, warning := range resp.Warnings {
			if strings.Contains(warning, "LEAK") {
				t.Errorf("warning leaks the sturdy ref: %s", warning)
			}
		}
	}
	if logs := w.logs.String(); strings.Contains(logs, "LEAK") || !strings.Contains(logs, "injection refused") {
		t.Fatalf("logs leak the sturdy ref or lack the refusals:\n%s", logs)
	}
}
