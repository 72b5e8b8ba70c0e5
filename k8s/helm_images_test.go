package k8s

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestHelmImages checks which image each part of the chart runs: the injector
// Deployment and the helm test pod the full binary (image), the injected
// sidecar the -tags nok8s build (sidecar.image, by default the injector's
// repository less "-injector", same tag).
func TestHelmImages(t *testing.T) {
	for _, tc := range []struct {
		set               string
		injector, sidecar string
	}{
		{"", "ghcr.io/vatcar/vatcar-injector:0.1.0", "ghcr.io/vatcar/vatcar:0.1.0"},
		{"image.tag=1.2.3", "ghcr.io/vatcar/vatcar-injector:1.2.3", "ghcr.io/vatcar/vatcar:1.2.3"},
		{"image.repository=registry.example.com/mirror/vatcar-injector",
			"registry.example.com/mirror/vatcar-injector:0.1.0", "registry.example.com/mirror/vatcar:0.1.0"},
		// One full image of one's own runs both.
		{"image.repository=registry.example.com/vatcar,image.tag=dev",
			"registry.example.com/vatcar:dev", "registry.example.com/vatcar:dev"},
		{"sidecar.image=registry.example.com/slim:7",
			"ghcr.io/vatcar/vatcar-injector:0.1.0", "registry.example.com/slim:7"},
	} {
		args := []string{"template", "rel", chartDir, "--kube-version", "1.31.0"}
		if tc.set != "" {
			args = append(args, "--set", tc.set)
		}
		r := decodeRendered(t, helm(t, args...))
		if got := r.deployments[0].Spec.Template.Spec.Containers[0].Image; got != tc.injector {
			t.Errorf("--set %q: injector image %s, want %s", tc.set, got, tc.injector)
		}
		if got := r.pods[0].Spec.Containers[0].Image; got != tc.injector {
			t.Errorf("--set %q: helm test pod image %s, want the injector's %s (it runs inject selftest)", tc.set, got, tc.injector)
		}
		cfg, err := ParseConfig([]byte(r.configMaps[0].Data["config.yaml"]))
		if err != nil {
			t.Fatalf("--set %q: chart's config.yaml: %v", tc.set, err)
		}
		if cfg.Image != tc.sidecar {
			t.Errorf("--set %q: sidecar image %s, want %s", tc.set, cfg.Image, tc.sidecar)
		}
		// A pod that opts in gets that image, probed with `vatcar inject
		// probe`, which the sidecar image's build keeps.
		inj, err := NewInjector(cfg)
		if err != nil {
			t.Fatal(err)
		}
		res, err := inj.Inject(&corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "app", Annotations: map[string]string{AnnotationInject: "true"}},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "example.com/app:1"}}},
		}, Target{})
		if err != nil || !res.Injected {
			t.Fatalf("--set %q: inject: %+v, %v", tc.set, res, err)
		}
		i := slices.IndexFunc(res.Pod.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == SidecarName })
		if i < 0 {
			t.Fatalf("--set %q: no %s init container (native sidecar) in %+v", tc.set, SidecarName, res.Pod.Spec)
		}
		c := res.Pod.Spec.InitContainers[i]
		if c.Image != tc.sidecar || c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil ||
			c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.ReadinessProbe.HTTPGet.Port.StrVal != HealthPortName {
			t.Errorf("--set %q: sidecar image %s, readiness %+v; want %s probed by httpGet /readyz on port %s", tc.set, c.Image, c.ReadinessProbe, tc.sidecar, HealthPortName)
		}
	}
}
