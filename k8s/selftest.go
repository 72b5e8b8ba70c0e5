package k8s

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ErrNotInjected reports a self-test pod that came back from the API server
// without the sidecar.
var ErrNotInjected = errors.New("the API server returned the test pod without the sidecar")

// serviceAccountDir is where Kubernetes mounts a pod's API credentials.
const serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// SelfTestConfig configures SelfTest. The zero value uses the pod's own
// in-cluster credentials.
type SelfTestConfig struct {
	// APIServer is the API server's base URL. Empty:
	// https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT.
	APIServer string
	// TokenFile, CAFile and NamespaceFile are the service account's
	// credentials. Empty: the files under
	// /var/run/secrets/kubernetes.io/serviceaccount.
	TokenFile, CAFile, NamespaceFile string
	// Namespace the test pod is created in (dry run). Empty: read from
	// NamespaceFile.
	Namespace string
	// Image of the test pod's container; it is never pulled. Empty:
	// "registry.k8s.io/pause:3.10".
	Image string
	// Timeout bounds the request. Zero: 30 s.
	Timeout time.Duration
}

// SelfTest asks the API server to create, as a dry run, a pod that opts in
// to injection, and checks that the pod it returns has the sidecar: the
// whole admission path (webhook configuration, CA bundle, Service, injector)
// works. It backs `vatcar inject selftest`, the chart's `helm test`; it needs
// permission to create pods in the namespace, and creates nothing.
func SelfTest(ctx context.Context, cfg SelfTestConfig) error {
	if cfg.APIServer == "" {
		host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
		if host == "" || port == "" {
			return errors.New("self-test: not in a cluster (KUBERNETES_SERVICE_HOST unset) and no API server given")
		}
		cfg.APIServer = "https://" + net.JoinHostPort(host, port)
	}
	if cfg.TokenFile == "" {
		cfg.TokenFile = serviceAccountDir + "/token"
	}
	if cfg.CAFile == "" {
		cfg.CAFile = serviceAccountDir + "/ca.crt"
	}
	if cfg.NamespaceFile == "" {
		cfg.NamespaceFile = serviceAccountDir + "/namespace"
	}
	if cfg.Image == "" {
		cfg.Image = "registry.k8s.io/pause:3.10"
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	token, err := os.ReadFile(cfg.TokenFile)
	if err != nil {
		return fmt.Errorf("self-test: %w", err)
	}
	if cfg.Namespace == "" {
		ns, err := os.ReadFile(cfg.NamespaceFile)
		if err != nil {
			return fmt.Errorf("self-test: %w", err)
		}
		cfg.Namespace = strings.TrimSpace(string(ns))
	}
	caPEM, err := os.ReadFile(cfg.CAFile)
	if err != nil {
		return fmt.Errorf("self-test: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("self-test: no certificate in %s", cfg.CAFile)
	}
	body, err := json.Marshal(selfTestPod(cfg.Image))
	if err != nil {
		return fmt.Errorf("self-test: %w", err)
	}
	u := strings.TrimSuffix(cfg.APIServer, "/") + "/api/v1/namespaces/" + url.PathEscape(cfg.Namespace) + "/pods?dryRun=All"
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("self-test: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return fmt.Errorf("self-test: create pod (dry run): %w", err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("self-test: read answer: %w", err)
	}
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		return fmt.Errorf("self-test: create pod (dry run): %s: %s", resp.Status, bytes.TrimSpace(out))
	}
	var got corev1.Pod
	if err := json.Unmarshal(out, &got); err != nil {
		return fmt.Errorf("self-test: decode pod: %w", err)
	}
	if !injected(&got.Spec) {
		return fmt.Errorf("%w (is the webhook reachable? its failurePolicy Ignore lets pods through uninjected)", ErrNotInjected)
	}
	return nil
}

// selfTestUID is the test pod's user: the pause image's own (65535).
const selfTestUID = 65535

// selfTestPod is the pod SelfTest asks the API server to create (dry run).
// It passes the Pod Security Standard "restricted" (non-root, no privilege
// escalation, every capability dropped, RuntimeDefault seccomp), as the
// sidecar the injector adds does, so `helm test` works in a namespace that
// enforces it.
func selfTestPod(image string) *corev1.Pod {
	return &corev1.Pod{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "vatcar-selftest-",
			Annotations:  map[string]string{AnnotationInject: "true", AnnotationWorkload: "vatcar-selftest"},
		},
		Spec: corev1.PodSpec{
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot:   ptr(true),
				RunAsUser:      ptr(int64(selfTestUID)),
				RunAsGroup:     ptr(int64(selfTestUID)),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name:  "app",
				Image: image,
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: ptr(false),
					Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
					ReadOnlyRootFilesystem:   ptr(true),
				},
			}},
		},
	}
}
