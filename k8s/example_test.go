package k8s_test

import (
	"fmt"
	"os"
	"strings"

	"github.com/vatcar/vatcar/k8s"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func ExampleInjector_Inject() {
	inj, err := k8s.NewInjector(k8s.Config{}) // the zero Config: all defaults
	if err != nil {
		panic(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "greeter-7d9f8c6b5-",
			Labels:       map[string]string{"pod-template-hash": "7d9f8c6b5"},
			Annotations: map[string]string{
				k8s.AnnotationInject:  "true",
				k8s.AnnotationExports: "greeter=grpc",
			},
		},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "app", Image: "example.com/greeter:1",
			Ports: []corev1.ContainerPort{{Name: "grpc", ContainerPort: 50051}},
		}}},
	}
	res, err := inj.Inject(pod, k8s.Target{})
	if err != nil {
		panic(err)
	}
	sc := res.Pod.Spec.InitContainers[0]
	fmt.Println(sc.Name, *sc.RestartPolicy)
	fmt.Println(strings.Join(sc.Args, "\n"))
	fmt.Println(res.Pod.Spec.Volumes[0].Secret.SecretName)

	again, _ := inj.Inject(res.Pod, k8s.Target{})
	fmt.Println(again.Injected, again.Reason)
	// Output:
	// vatcar Always
	// run
	// --listen=tcp:0.0.0.0:7440
	// --public-address=tcp:greeter.$(VATCAR_NAMESPACE).svc.cluster.local:7440
	// --secret-key-file=/var/run/vatcar/key/key.pem
	// --cap-dir=/var/run/vatcar/caps
	// --admin-listen=unix:/var/run/vatcar/admin/private/admin.sock
	// --health-listen=0.0.0.0:7441
	// --export=greeter=127.0.0.1:50051
	// --revocations=/var/run/vatcar/revocations/revocations
	// greeter-vatcar-key
	// false already injected
}

func ExampleInjectManifests() {
	inj, _ := k8s.NewInjector(k8s.Config{KubeVersion: "1.28"})
	manifest := `apiVersion: v1
kind: Service
metadata: {name: greeter}
---
apiVersion: batch/v1
kind: Job
metadata: {name: report}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: report, image: example.com/report:1}]
`
	var out strings.Builder
	warnings, err := k8s.InjectManifests(inj, strings.NewReader(manifest), &out)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	fmt.Println(strings.Count(out.String(), "name: vatcar\n"), "sidecar")
	for _, w := range warnings {
		fmt.Println(w[:strings.Index(w, ",")])
	}
	// Output:
	// 1 sidecar
	// Job/report: pod with restartPolicy Never got a regular sidecar container
}
