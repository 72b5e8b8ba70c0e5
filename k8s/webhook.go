package k8s

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Webhook paths. The MutatingWebhookConfiguration sends pods of namespaces
// labelled vatcar.io/inject=enabled to PathInjectNamespace and pods of other
// namespaces to PathInject (where only an annotation opts a pod in), because
// an AdmissionReview does not carry its namespace's labels.
const (
	PathInject          = "/inject"
	PathInjectNamespace = "/inject/namespace"
	PathHealthz         = "/healthz"
)

// maxReviewBytes bounds a request body; the API server sends at most 3 MiB
// objects, and a review wraps one (twice for updates).
const maxReviewBytes = 8 << 20

// Handler is the admission webhook's HTTP handler: it decodes an
// AdmissionReview v1, runs the Injector on the pod, and answers with a JSON
// patch. It holds no state besides the Injector, is safe for concurrent use,
// and never panics on a malformed request: that gets a 4xx answer.
type Handler struct {
	inj *Injector
	log *slog.Logger
	mux *http.ServeMux
}

// NewHandler returns the webhook handler for inj. A nil logger discards.
func NewHandler(inj *Injector, logger *slog.Logger) *Handler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	h := &Handler{inj: inj, log: logger, mux: http.NewServeMux()}
	h.mux.HandleFunc("POST "+PathInject, func(w http.ResponseWriter, r *http.Request) { h.serveReview(w, r, false) })
	h.mux.HandleFunc("POST "+PathInjectNamespace, func(w http.ResponseWriter, r *http.Request) { h.serveReview(w, r, true) })
	h.mux.HandleFunc("GET "+PathHealthz, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	return h
}

// ServeHTTP routes the webhook's paths.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func (h *Handler) serveReview(w http.ResponseWriter, r *http.Request, namespaceOptedIn bool) {
	review, status, err := readReview(w, r)
	if err != nil {
		h.log.Warn("rejecting admission request", "remote", r.RemoteAddr, "err", err)
		http.Error(w, err.Error(), status)
		return
	}
	resp := h.admit(review.Request, namespaceOptedIn)
	resp.UID = review.Request.UID
	out := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: admissionv1.SchemeGroupVersion.String(), Kind: "AdmissionReview"},
		Response: resp,
	}
	body, err := json.Marshal(out)
	if err != nil {
		h.log.Error("encode admission response", "err", err)
		http.Error(w, "encode response", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(body)
}

// readReview decodes and checks the request body, returning the HTTP status
// for an error.
func readReview(w http.ResponseWriter, r *http.Request) (*admissionv1.AdmissionReview, int, error) {
	if ct, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || ct != "application/json" {
		return nil, http.StatusUnsupportedMediaType, fmt.Errorf("%w: content type %q, want application/json", ErrBadReview, r.Header.Get("Content-Type"))
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxReviewBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, http.StatusRequestEntityTooLarge, fmt.Errorf("%w: body over %d bytes", ErrBadReview, maxReviewBytes)
		}
		return nil, http.StatusBadRequest, fmt.Errorf("%w: read body: %v", ErrBadReview, err)
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil {
		return nil, http.StatusBadRequest, fmt.Errorf("%w: %v", ErrBadReview, err)
	}
	if gv := admissionv1.SchemeGroupVersion.String(); review.APIVersion != gv || review.Kind != "AdmissionReview" {
		return nil, http.StatusBadRequest, fmt.Errorf("%w: got %s %s, want %s AdmissionReview", ErrBadReview, review.APIVersion, review.Kind, gv)
	}
	if review.Request == nil {
		return nil, http.StatusBadRequest, fmt.Errorf("%w: no request", ErrBadReview)
	}
	if review.Request.UID == "" {
		return nil, http.StatusBadRequest, fmt.Errorf("%w: request has no uid", ErrBadReview)
	}
	return &review, 0, nil
}

// admit decides one admission request.
func (h *Handler) admit(req *admissionv1.AdmissionRequest, namespaceOptedIn bool) *admissionv1.AdmissionResponse {
	allow := &admissionv1.AdmissionResponse{Allowed: true}
	if req.Kind.Group != "" || req.Kind.Kind != "Pod" || req.Operation != admissionv1.Create || req.SubResource != "" {
		return allow
	}
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		return deny(http.StatusBadRequest, fmt.Sprintf("vatcar injector: decode pod: %v", err))
	}
	var t Target
	if namespaceOptedIn {
		t.NamespaceLabels = map[string]string{LabelNamespaceInject: "enabled"}
	}
	patch, res, err := h.inj.Patch(&pod, t)
	name := pod.Name
	if name == "" {
		name = pod.GenerateName
	}
	if err != nil {
		h.log.Warn("injection refused", "namespace", req.Namespace, "pod", name, "err", err)
		return deny(http.StatusUnprocessableEntity, "vatcar injector: "+err.Error())
	}
	h.log.Debug("admission", "namespace", req.Namespace, "pod", name, "injected", res.Injected, "reason", res.Reason)
	allow.Warnings = res.Warnings
	if patch != nil {
		pt := admissionv1.PatchTypeJSONPatch
		allow.Patch, allow.PatchType = patch, &pt
	}
	return allow
}

func deny(code int32, msg string) *admissionv1.AdmissionResponse {
	return &admissionv1.AdmissionResponse{Allowed: false, Result: &metav1.Status{
		Status: metav1.StatusFailure, Code: code, Message: msg,
	}}
}
