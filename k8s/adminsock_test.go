package k8s

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestAdminSocketOnlyInSidecar checks the injector's output: the admin
// API's socket directory is mounted into the sidecar container alone, the
// sidecar listens there and tells ctl so, and its probes are httpGet on the
// health port.
func TestAdminSocketOnlyInSidecar(t *testing.T) {
	for _, kube := range []string{"1.31", "1.28"} { // native sidecar, regular container
		t.Run(kube, func(t *testing.T) {
			inj, err := NewInjector(Config{KubeVersion: kube})
			if err != nil {
				t.Fatal(err)
			}
			res, err := inj.Inject(&corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: "app", Annotations: map[string]string{
					AnnotationInject: "true", AnnotationExports: "api=8080",
				}},
				Spec: corev1.PodSpec{
					InitContainers: []corev1.Container{{Name: "setup", Image: "example.com/setup:1"}},
					Containers: []corev1.Container{
						{Name: "app", Image: "example.com/app:1", Ports: []corev1.ContainerPort{{ContainerPort: 8080}}},
						{Name: "debug", Image: "example.com/debug:1"},
					},
				},
			}, Target{})
			if err != nil || !res.Injected {
				t.Fatalf("Inject: %+v, %v", res, err)
			}
			spec := res.Pod.Spec
			i := slices.IndexFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == volAdmin })
			if i < 0 || spec.Volumes[i].EmptyDir == nil {
				t.Fatalf("volumes %+v: want an emptyDir %s", spec.Volumes, volAdmin)
			}
			var sidecars int
			for _, c := range slices.Concat(spec.InitContainers, spec.Containers) {
				mounted := slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
					return m.Name == volAdmin || strings.HasPrefix(AdminDir, m.MountPath) && m.MountPath != "/"
				})
				if c.Name != SidecarName {
					if mounted {
						t.Errorf("container %s mounts the admin socket's directory: %+v", c.Name, c.VolumeMounts)
					}
					continue
				}
				sidecars++
				if !mounted {
					t.Errorf("the sidecar does not mount %s at %s: %+v", volAdmin, AdminDir, c.VolumeMounts)
				}
				if !slices.Contains(c.Args, "--admin-listen=unix:"+AdminSocket) || !strings.HasPrefix(AdminSocket, AdminDir+"/") {
					t.Errorf("sidecar args %v: want --admin-listen=unix:%s inside %s", c.Args, AdminSocket, AdminDir)
				}
				if !slices.Contains(c.Env, corev1.EnvVar{Name: EnvAdmin, Value: "unix:" + AdminSocket}) {
					t.Errorf("sidecar env %v: want %s=unix:%s for vatcar ctl", c.Env, EnvAdmin, AdminSocket)
				}
				for name, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
					if p == nil || p.HTTPGet == nil || p.Exec != nil || p.HTTPGet.Port.StrVal != HealthPortName {
						t.Errorf("%s probe %+v: want httpGet on port %s", name, p, HealthPortName)
					}
				}
				if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool {
					return p.Name == HealthPortName && p.ContainerPort == DefaultHealthPort
				}) {
					t.Errorf("sidecar ports %+v: want %s on %d", c.Ports, HealthPortName, DefaultHealthPort)
				}
			}
			if sidecars != 1 {
				t.Errorf("%d sidecar containers, want 1", sidecars)
			}
		})
	}
}

func TestAdminPortIsHealthPortsOldName(t *testing.T) {
	for _, tt := range []struct {
		cfg  Config
		want int32
	}{
		{Config{}, DefaultHealthPort},
		{Config{AdminPort: 9001}, 9001},
		{Config{AdminPort: 9001, HealthPort: 9002}, 9002},
	} {
		if got := tt.cfg.withDefaults().HealthPort; got != tt.want {
			t.Errorf("%+v: health port %d, want %d", tt.cfg, got, tt.want)
		}
	}
}
