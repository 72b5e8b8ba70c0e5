package k8s

import (
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/vatcar/vatcar/internal/buildinfo"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"
)

// Defaults used where a Config field is zero.
const (
	// DefaultImageRepository is the sidecar image's repository when
	// Config.Image is empty; DefaultImage adds the tag.
	DefaultImageRepository = "ghcr.io/vatcar/vatcar"
	// ChartAppVersion is the Helm chart's appVersion (helm/vatcar/Chart.yaml;
	// a test keeps the two equal): the image tag of a development build.
	ChartAppVersion = "0.1.0"
	// DefaultVatPort is the CapTP port when Config.VatPort is zero.
	DefaultVatPort = 7440
	// DefaultHealthPort is the port of the sidecar's /healthz, /readyz and
	// /metrics when Config.HealthPort (and the older AdminPort) is zero.
	DefaultHealthPort = 7441
	// DefaultHealthAddress is the IP the health listener binds when
	// Config.HealthAddress is empty: every address, because kubelet's
	// httpGet probes and Prometheus reach the pod on its IP. The admin API
	// is not there: it listens on a Unix socket (AdminSocket).
	DefaultHealthAddress = "0.0.0.0"
	// DefaultClusterDomain is the DNS suffix of Services when
	// Config.ClusterDomain is empty.
	DefaultClusterDomain = "cluster.local"
	// DefaultUID is the user and group the sidecar runs as when Config.RunAsUser
	// is zero (distroless "nonroot").
	DefaultUID = 65532
	// NativeSidecarMinor is the first Kubernetes 1.x minor version on which the
	// sidecar is injected as a native sidecar (init container, restartPolicy
	// Always).
	NativeSidecarMinor = 29
)

// Config is the injector's configuration, loaded once at start-up. The zero
// value is valid: every zero field means the documented default. The JSON
// names are the keys of the YAML config file (see LoadConfig).
type Config struct {
	// Image is the sidecar image. Empty: DefaultImage().
	Image string `json:"image,omitempty"`
	// ImagePullPolicy of the sidecar. Empty: Kubernetes' default for the tag.
	ImagePullPolicy corev1.PullPolicy `json:"imagePullPolicy,omitempty"`
	// KubeVersion is the cluster's version, "MAJOR.MINOR" (a "v" prefix and a
	// patch or suffix are ignored). Below 1.29 the sidecar is a regular
	// container with start-up gating. Empty: the cluster is assumed to run
	// 1.29 or later (native sidecars).
	KubeVersion string `json:"kubeVersion,omitempty"`
	// VatPort is the sidecar's CapTP port, the one the workload's Service
	// exposes. Zero: DefaultVatPort.
	VatPort int32 `json:"vatPort,omitempty"`
	// HealthPort is the port of the sidecar's /healthz, /readyz and
	// /metrics, which the probes (httpGet) and Prometheus use. Zero:
	// AdminPort, else DefaultHealthPort.
	HealthPort int32 `json:"healthPort,omitempty"`
	// HealthAddress is the IP the health listener binds; it must not be a
	// loopback address, which kubelet's httpGet probes cannot reach. Empty:
	// DefaultHealthAddress.
	HealthAddress string `json:"healthAddress,omitempty"`
	// AdminPort is the older name of HealthPort (it was the port of the
	// admin API too, which now listens on a Unix socket only the sidecar
	// container mounts); HealthPort wins when both are set.
	AdminPort int32 `json:"adminPort,omitempty"`
	// AdminAddress is accepted for old config files and ignored: the admin
	// API listens on a Unix socket, and the health listener binds
	// HealthAddress.
	AdminAddress string `json:"adminAddress,omitempty"`
	// ClusterDomain is the DNS suffix of Service names. Empty:
	// DefaultClusterDomain.
	ClusterDomain string `json:"clusterDomain,omitempty"`
	// Resources of the sidecar. Nil: DefaultResources().
	Resources *corev1.ResourceRequirements `json:"resources,omitempty"`
	// RunAsUser is the sidecar's UID and GID; it must not be 0. Zero:
	// DefaultUID.
	RunAsUser int64 `json:"runAsUser,omitempty"`
	// LogFormat, when set, is passed as `--log-format` ("text" or "json").
	// Empty: the sidecar's default.
	LogFormat string `json:"logFormat,omitempty"`
	// CPUs, when positive, is passed to every sidecar as `--cpus` (its
	// GOMAXPROCS, at most MaxCPUs); a pod's vatcar.io/cpus annotation wins.
	// Zero: the flag is left out and the sidecar runs on its default, one
	// CPU (sidecar.DefaultCPUs).
	CPUs int `json:"cpus,omitempty"`
	// ExtraArgs are appended to the sidecar's `vatcar run` arguments, after
	// the ones the injector derives, so a flag given here wins over them
	// (even over a pod's annotation).
	ExtraArgs []string `json:"extraArgs,omitempty"`
}

// DefaultImage returns the sidecar image when Config.Image is empty:
// DefaultImageRepository tagged with this binary's own release version
// ("v0.2.0" -> ":0.2.0"), so an injector runs the sidecar of its release.
// A development build (no release version: "(devel)", a pseudo-version, a
// modified work tree) uses ChartAppVersion, the latest release it knows of.
func DefaultImage() string {
	return imageFor(buildinfo.Read())
}

// imageFor is DefaultImage for build info.
func imageFor(info buildinfo.Info) string {
	tag := info.ImageTag()
	if tag == "" {
		tag = ChartAppVersion
	}
	return DefaultImageRepository + ":" + tag
}

// DefaultResources returns the sidecar's requests and limits when
// Config.Resources is nil.
func DefaultResources() corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("50m"),
			corev1.ResourceMemory: resource.MustParse("32Mi"),
		},
		Limits: corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("1"),
			corev1.ResourceMemory: resource.MustParse("256Mi"),
		},
	}
}

var (
	imageRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$`)
	domainRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
)

// Validate reports the first problem with c, wrapped in ErrInvalidConfig.
func (c Config) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, a...))
	}
	if c.Image != "" && !imageRE.MatchString(c.Image) {
		return bad("image %q is not an image reference", c.Image)
	}
	switch c.ImagePullPolicy {
	case "", corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		return bad("imagePullPolicy %q: want Always, IfNotPresent or Never", c.ImagePullPolicy)
	}
	if c.KubeVersion != "" {
		if _, _, err := parseKubeVersion(c.KubeVersion); err != nil {
			return bad("kubeVersion: %v", err)
		}
	}
	if c.VatPort < 0 || c.VatPort > 65535 {
		return bad("vatPort %d out of range", c.VatPort)
	}
	if c.HealthPort < 0 || c.HealthPort > 65535 {
		return bad("healthPort %d out of range", c.HealthPort)
	}
	if c.AdminPort < 0 || c.AdminPort > 65535 {
		return bad("adminPort %d out of range", c.AdminPort)
	}
	d := c.withDefaults()
	if d.VatPort == d.HealthPort {
		return bad("vatPort and healthPort are both %d", d.VatPort)
	}
	if c.HealthAddress != "" {
		ip, err := netip.ParseAddr(c.HealthAddress)
		if err != nil {
			return bad("healthAddress %q is not an IP address", c.HealthAddress)
		}
		if ip.IsLoopback() {
			return bad("healthAddress %q is a loopback address: kubelet's httpGet probes reach the pod on its IP", c.HealthAddress)
		}
	}
	if c.AdminAddress != "" {
		if _, err := netip.ParseAddr(c.AdminAddress); err != nil {
			return bad("adminAddress %q is not an IP address", c.AdminAddress)
		}
	}
	if c.ClusterDomain != "" && !domainRE.MatchString(c.ClusterDomain) {
		return bad("clusterDomain %q is not a DNS name", c.ClusterDomain)
	}
	if c.RunAsUser < 0 {
		return bad("runAsUser %d is negative (0 means the default, root is not allowed)", c.RunAsUser)
	}
	switch c.LogFormat {
	case "", "text", "json":
	default:
		return bad("logFormat %q: want text or json", c.LogFormat)
	}
	if c.CPUs < 0 || c.CPUs > MaxCPUs {
		return bad("cpus %d: want 0 (the sidecar's default) to %d", c.CPUs, MaxCPUs)
	}
	for _, a := range c.ExtraArgs {
		if a == "" {
			return bad("extraArgs holds an empty argument")
		}
	}
	return nil
}

// withDefaults returns c with every zero field replaced by its default.
func (c Config) withDefaults() Config {
	if c.Image == "" {
		c.Image = DefaultImage()
	}
	if c.VatPort == 0 {
		c.VatPort = DefaultVatPort
	}
	if c.HealthPort == 0 {
		c.HealthPort = c.AdminPort
	}
	if c.HealthPort == 0 {
		c.HealthPort = DefaultHealthPort
	}
	if c.HealthAddress == "" {
		c.HealthAddress = DefaultHealthAddress
	}
	if c.ClusterDomain == "" {
		c.ClusterDomain = DefaultClusterDomain
	}
	if c.Resources == nil {
		r := DefaultResources()
		c.Resources = &r
	}
	if c.RunAsUser == 0 {
		c.RunAsUser = DefaultUID
	}
	return c
}

// nativeSidecars reports whether c's cluster supports native sidecars.
func (c Config) nativeSidecars() bool {
	if c.KubeVersion == "" {
		return true
	}
	major, minor, err := parseKubeVersion(c.KubeVersion)
	if err != nil {
		return true
	}
	return major > 1 || minor >= NativeSidecarMinor
}

// parseKubeVersion reads "v1.29", "1.29.3" or "v1.30.0-gke.1" as (1, 29).
func parseKubeVersion(s string) (major, minor int, err error) {
	v := strings.TrimPrefix(s, "v")
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return 0, 0, fmt.Errorf("version %q: want MAJOR.MINOR", s)
	}
	// Minor versions may carry a suffix such as "29+" (EKS, GKE).
	minorDigits := strings.TrimRightFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' })
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(minorDigits)
	if err1 != nil || err2 != nil || major < 1 || minor < 0 {
		return 0, 0, fmt.Errorf("version %q: want MAJOR.MINOR", s)
	}
	return major, minor, nil
}

// ParseConfig reads an injector Config from YAML (or JSON); unknown keys are
// errors, and the result is validated.
func ParseConfig(data []byte) (Config, error) {
	var c Config
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return Config{}, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// LoadConfig reads and validates the injector config file at path.
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("load injector config: %w", err)
	}
	c, err := ParseConfig(data)
	if err != nil {
		return Config{}, fmt.Errorf("load injector config %s: %w", path, err)
	}
	return c, nil
}
