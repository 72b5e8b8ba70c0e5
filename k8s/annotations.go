package k8s

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Annotations and labels the injector reads and writes.
const (
	// AnnotationInject on a pod (or pod template) opts in ("true") or out
	// ("false"). An opt-out anywhere wins over any opt-in.
	AnnotationInject = "vatcar.io/inject"
	// LabelNamespaceInject on a namespace opts every pod in it in ("enabled")
	// or out ("disabled").
	LabelNamespaceInject = "vatcar.io/inject"
	// LabelInjector marks the injector's own pods, which are never injected.
	LabelInjector = "vatcar.io/injector"
	// AnnotationExports lists the pod's exports: "NAME=PORT[,NAME=PORT...]",
	// PORT being a container port number or name. Each is served as the
	// sturdy ref NAME.
	AnnotationExports = "vatcar.io/exports"
	// AnnotationImports lists the pod's imports, separated by ";" or new
	// lines: "NAME=SOURCE,port=PORT". SOURCE is a capnp:// URI or
	// "secret:SECRET/KEY", a key of a Secret in the pod's namespace holding a
	// cap file. The sidecar serves each on 127.0.0.1:PORT.
	AnnotationImports = "vatcar.io/imports"
	// AnnotationWorkload names the pod's workload. Empty: derived from the
	// pod's controller (see Target.Workload: a Deployment's or CronJob's name
	// for the pods of its ReplicaSets or Jobs). It names the vat key Secret
	// and Service.
	AnnotationWorkload = "vatcar.io/workload"
	// AnnotationService names the Service whose DNS name is the vat's public
	// address. Empty: the workload name.
	AnnotationService = "vatcar.io/service"
	// AnnotationKeySecret names the Secret (key "key.pem") holding the vat's
	// secret key. Empty: "<workload>-vatcar-key" for pods with exports; pods
	// without exports then get an ephemeral key, held in memory only.
	AnnotationKeySecret = "vatcar.io/key-secret"
	// AnnotationNativeSidecar overrides the injector's choice of a native
	// sidecar ("true") or a regular container ("false") for one pod.
	AnnotationNativeSidecar = "vatcar.io/native-sidecar"
	// AnnotationProtoDescriptors names a ConfigMap in the pod's namespace
	// whose key ProtoDescriptorsKey holds a serialized
	// google.protobuf.FileDescriptorSet (protoc --descriptor_set_out) of the
	// bridged gRPC services. The sidecar mounts it at ProtoDir and passes it
	// as --proto-descriptors, so the unary methods it names take the
	// bridge's fast path. Empty: no descriptors, every call takes the general
	// path.
	AnnotationProtoDescriptors = "vatcar.io/proto-descriptors"
	// AnnotationRevocations names the ConfigMap in the pod's namespace whose
	// key RevocationsKey is the workload's revocation list (revoked sturdy
	// URIs or revocation ids, one per line). The sidecar of a pod with
	// exports mounts it (optional: a missing ConfigMap or key is an empty
	// list) at RevocationsDir and passes it as --revocations; the kubelet
	// updates the mounted file when the ConfigMap changes and the sidecar
	// applies it within seconds. Empty: "<workload>-vatcar-revocations".
	AnnotationRevocations = "vatcar.io/revocations"
	// AnnotationCPUs is the sidecar's GOMAXPROCS, a whole number from 1 to
	// MaxCPUs, passed as --cpus. Empty: Config.CPUs.
	AnnotationCPUs = "vatcar.io/cpus"
	// AnnotationStatus is written by the injector ("injected").
	AnnotationStatus = "vatcar.io/status"
	// annotationDefaultContainer makes kubectl logs/exec pick the app.
	annotationDefaultContainer = "kubectl.kubernetes.io/default-container"
)

// MaxCPUs bounds AnnotationCPUs and Config.CPUs, as `vatcar run` bounds
// --cpus: a larger number is a typo, not a machine.
const MaxCPUs = 1024

// Export is one entry of AnnotationExports.
type Export struct {
	// Name is the sturdy ref's name.
	Name string
	// Port is the app's gRPC port on loopback.
	Port int32
}

// Import is one entry of AnnotationImports. Exactly one of URI and Secret is
// set.
type Import struct {
	// Name is the import's name.
	Name string
	// URI is a capnp:// sturdy ref given inline.
	URI string
	// Secret and SecretKey name the key of a Secret holding a cap file.
	Secret, SecretKey string
	// Port is the loopback port the sidecar serves the import on.
	Port int32
}

var (
	nameRE   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$`)
	dnsRE    = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
	subdomRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`)
	keyRE    = regexp.MustCompile(`^[-._A-Za-z0-9]{1,253}$`)
)

func badAnnotation(key, format string, a ...any) error {
	return &AnnotationError{Key: key, Problem: fmt.Sprintf(format, a...)}
}

// parseSwitch reads an on/off value: "true"/"enabled" or "false"/"disabled".
func parseSwitch(key, v string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "true", "enabled":
		return true, nil
	case "false", "disabled":
		return false, nil
	}
	return false, badAnnotation(key, "%q: want true or false", v)
}

// parseCPUs reads a CPU count for key: a whole number from 1 to MaxCPUs.
func parseCPUs(key, v string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 1 || n > MaxCPUs {
		return 0, badAnnotation(key, "%q: want a whole number of CPUs from 1 to %d", v, MaxCPUs)
	}
	return n, nil
}

// parseExports reads AnnotationExports, resolving named ports against pod.
func parseExports(v string, spec *corev1.PodSpec) ([]Export, error) {
	var out []Export
	seen := map[string]bool{}
	for _, item := range splitList(v, ",;\n") {
		name, port, ok := strings.Cut(item, "=")
		name, port = strings.TrimSpace(name), strings.TrimSpace(port)
		if !ok || port == "" {
			return nil, badAnnotation(AnnotationExports, "%q: want NAME=PORT", item)
		}
		if !nameRE.MatchString(name) {
			return nil, badAnnotation(AnnotationExports, "name %q: want letters, digits, '.', '_', '-' (at most 63)", name)
		}
		if seen[name] {
			return nil, badAnnotation(AnnotationExports, "name %q given twice", name)
		}
		seen[name] = true
		p, err := resolvePort(port, spec)
		if err != nil {
			return nil, badAnnotation(AnnotationExports, "%s: %v", name, err)
		}
		out = append(out, Export{Name: name, Port: p})
	}
	return out, nil
}

// resolvePort reads a port number, or finds a named port among the pod's
// containers.
func resolvePort(s string, spec *corev1.PodSpec) (int32, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > 65535 {
			return 0, fmt.Errorf("port %d out of range", n)
		}
		return int32(n), nil
	}
	for _, cs := range [][]corev1.Container{spec.Containers, spec.InitContainers} {
		for _, c := range cs {
			for _, p := range c.Ports {
				if p.Name == s {
					return p.ContainerPort, nil
				}
			}
		}
	}
	return 0, fmt.Errorf("no container port named %q", s)
}

// parseImports reads AnnotationImports.
func parseImports(v string) ([]Import, error) {
	var out []Import
	seen := map[string]bool{}
	for _, item := range splitList(v, ";\n") {
		name, rest, ok := strings.Cut(item, "=")
		name = strings.TrimSpace(name)
		if !ok {
			return nil, badAnnotation(AnnotationImports, "entry %q: want NAME=SOURCE,port=PORT", name)
		}
		if !nameRE.MatchString(name) {
			return nil, badAnnotation(AnnotationImports, "name %q: want letters, digits, '.', '_', '-' (at most 63)", name)
		}
		if seen[name] {
			return nil, badAnnotation(AnnotationImports, "name %q given twice", name)
		}
		seen[name] = true
		im := Import{Name: name}
		fields := strings.Split(rest, ",")
		source := strings.TrimSpace(fields[0])
		switch {
		case strings.HasPrefix(source, "capnp://"):
			if strings.ContainsAny(source, " \t\"'") {
				return nil, badAnnotation(AnnotationImports, "%s: URI holds a space or quote", name)
			}
			im.URI = source
		case strings.HasPrefix(source, "secret:"):
			sec, key, ok := strings.Cut(strings.TrimPrefix(source, "secret:"), "/")
			if !ok || !subdomRE.MatchString(sec) || !keyRE.MatchString(key) {
				return nil, badAnnotation(AnnotationImports, "%s: want secret:SECRET/KEY", name)
			}
			im.Secret, im.SecretKey = sec, key
		default:
			return nil, badAnnotation(AnnotationImports, "%s: source must be a capnp:// URI or secret:SECRET/KEY", name)
		}
		for _, f := range fields[1:] {
			k, val, _ := strings.Cut(strings.TrimSpace(f), "=")
			if k != "port" {
				return nil, badAnnotation(AnnotationImports, "%s: unknown option %q (want port=PORT)", name, k)
			}
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 || n > 65535 {
				return nil, badAnnotation(AnnotationImports, "%s: port %q: want 1-65535", name, val)
			}
			im.Port = int32(n)
		}
		if im.Port == 0 {
			return nil, badAnnotation(AnnotationImports, "%s: missing port=PORT", name)
		}
		out = append(out, im)
	}
	return out, nil
}

// splitList splits s at any of seps and drops blank items.
func splitList(s, seps string) []string {
	var out []string
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return strings.ContainsRune(seps, r) }) {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// envName turns an import name into the suffix of its environment variable.
func envName(name string) string {
	b := []byte(strings.ToUpper(name))
	for i, c := range b {
		if (c < 'A' || c > 'Z') && (c < '0' || c > '9') {
			b[i] = '_'
		}
	}
	return string(b)
}
