package k8s

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
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
