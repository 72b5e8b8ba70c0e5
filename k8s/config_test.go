package k8s

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/vatcar/vatcar/internal/buildinfo"
	"sigs.k8s.io/yaml"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"zero value", Config{}, true},
		{"full", Config{Image: "r.example.com/vatcar:v1@sha256:abc", ImagePullPolicy: "Always", KubeVersion: "v1.30.2-gke.1", VatPort: 1, AdminPort: 2, AdminAddress: "::", ClusterDomain: "corp.internal", RunAsUser: 1000, LogFormat: "json"}, true},
		{"image with space", Config{Image: "a b"}, false},
		{"bad pull policy", Config{ImagePullPolicy: "Sometimes"}, false},
		{"bad kube version", Config{KubeVersion: "latest"}, false},
		{"kube version without minor", Config{KubeVersion: "1"}, false},
		{"vat port too big", Config{VatPort: 70000}, false},
		{"negative admin port", Config{AdminPort: -1}, false},
		{"same ports", Config{VatPort: 9000, AdminPort: 9000}, false},
		{"admin port equals default vat port", Config{AdminPort: DefaultVatPort}, false},
		{"admin address not an IP", Config{AdminAddress: "localhost"}, false},
		{"health port", Config{HealthPort: 9000}, true},
		{"health port equals vat port", Config{VatPort: 9000, HealthPort: 9000}, false},
		{"negative health port", Config{HealthPort: -1}, false},
		{"health address v6", Config{HealthAddress: "::"}, true},
		{"health address loopback", Config{HealthAddress: "127.0.0.1"}, false},
		{"health address not an IP", Config{HealthAddress: "localhost"}, false},
		{"bad cluster domain", Config{ClusterDomain: "Cluster_Local"}, false},
		{"negative uid", Config{RunAsUser: -1}, false},
		{"bad log format", Config{LogFormat: "xml"}, false},
		{"empty extra arg", Config{ExtraArgs: []string{""}}, false},
		{"cpus", Config{CPUs: 4}, true},
		{"max cpus", Config{CPUs: MaxCPUs}, true},
		{"negative cpus", Config{CPUs: -1}, false},
		{"too many cpus", Config{CPUs: MaxCPUs + 1}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.ok && err != nil {
				t.Fatalf("Validate() = %v, want nil", err)
			}
			if !tc.ok && !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("Validate() = %v, want ErrInvalidConfig", err)
			}
		})
	}
}

func TestParseConfigIsStrict(t *testing.T) {
	if _, err := ParseConfig([]byte("image: x\nvatprot: 1\n")); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("unknown key: err = %v, want ErrInvalidConfig", err)
	}
	if _, err := ParseConfig([]byte("vatPort: 0x\n")); err == nil {
		t.Fatal("bad type: no error")
	}
	cfg, err := ParseConfig([]byte("kubeVersion: '1.28'\nresources: {limits: {memory: 1Gi}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.nativeSidecars() || cfg.Resources.Limits.Memory().String() != "1Gi" {
		t.Fatalf("parsed %+v", cfg)
	}
}

func TestNativeSidecarsByVersion(t *testing.T) {
	for v, want := range map[string]bool{"": true, "1.28": false, "v1.28.9": false, "1.29": true, "1.29+": true, "1.33.1-eks": true, "2.0": true, "1.9": false} {
		if got := (Config{KubeVersion: v}).nativeSidecars(); got != want {
			t.Errorf("KubeVersion %q: native = %v, want %v", v, got, want)
		}
	}
}

// TestDefaultImageIsTheBuildsRelease: an injector without an image in its
// config runs the sidecar image of its own release, and a development build
// the chart's appVersion.
func TestDefaultImageIsTheBuildsRelease(t *testing.T) {
	for _, tc := range []struct {
		version, image string
	}{
		{"v0.3.1", "ghcr.io/vatcar/vatcar:0.3.1"},
		{"v1.0.0-rc.2", "ghcr.io/vatcar/vatcar:1.0.0-rc.2"},
		{buildinfo.Devel, "ghcr.io/vatcar/vatcar:" + ChartAppVersion},
		{"v0.3.2-0.20261206010000-abcdef123456", "ghcr.io/vatcar/vatcar:" + ChartAppVersion},
		{"v0.3.1+dirty", "ghcr.io/vatcar/vatcar:" + ChartAppVersion},
	} {
		if got := imageFor(buildinfo.Info{Version: tc.version}); got != tc.image {
			t.Errorf("version %q: image %s, want %s", tc.version, got, tc.image)
		}
	}
	inj, err := NewInjector(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := inj.cfg.Image, DefaultImage(); got != want || !strings.HasPrefix(got, DefaultImageRepository+":") || strings.HasSuffix(got, ":latest") {
		t.Errorf("zero Config: image %s, want DefaultImage() %s, a versioned tag", got, want)
	}
}

// TestChartAppVersionMatchesChart: the fallback tag of development builds
// is the chart's appVersion, so the chart and `inject -f` agree.
func TestChartAppVersionMatchesChart(t *testing.T) {
	data, err := os.ReadFile("helm/vatcar/Chart.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var chart struct {
		AppVersion string `json:"appVersion"`
	}
	if err := yaml.Unmarshal(data, &chart); err != nil {
		t.Fatal(err)
	}
	if chart.AppVersion != ChartAppVersion {
		t.Errorf("Chart.yaml appVersion %q, k8s.ChartAppVersion %q: keep them equal", chart.AppVersion, ChartAppVersion)
	}
}
