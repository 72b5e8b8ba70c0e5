package k8s

import (
	"fmt"
	"net"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Names and paths of what the injector adds to a pod.
const (
	// SidecarName is the injected container's name; a pod with a container
	// of this name counts as injected.
	SidecarName = "vatcar"
	// SidecarBinary is the vatcar binary's path in the sidecar image.
	SidecarBinary = "/vatcar"
	// VatPortName names the sidecar's CapTP port; a workload's Service
	// targets it.
	VatPortName = "vatcar-captp"
	// KeyDir holds the vat key (key.pem) from the workload's Secret.
	KeyDir = "/var/run/vatcar/key"
	// CapDir is where the sidecar writes a cap file per export.
	CapDir = "/var/run/vatcar/caps"
	// ImportDir holds cap files of imports taken from Secrets, as NAME.cap.
	ImportDir = "/var/run/vatcar/imports"
	// ProtoDir holds the FileDescriptorSet from the ConfigMap named by
	// AnnotationProtoDescriptors, as ProtoDescriptorsKey.
	ProtoDir = "/var/run/vatcar/protos"
	// ProtoDescriptorsKey is the key of the AnnotationProtoDescriptors
	// ConfigMap that holds the FileDescriptorSet (under binaryData).
	ProtoDescriptorsKey = "descriptors.protoset"
	// RevocationsDir holds the revocation list from the ConfigMap named by
	// AnnotationRevocations, as RevocationsKey. A directory mount (never a
	// subPath) so that the kubelet's updates reach the sidecar.
	RevocationsDir = "/var/run/vatcar/revocations"
	// RevocationsKey is the key of the revocation list ConfigMap that holds
	// the list.
	RevocationsKey = "revocations"
	// EnvImportPrefix starts the variable that tells app containers where an
	// import listens: VATCAR_IMPORT_<NAME>=127.0.0.1:PORT.
	EnvImportPrefix = "VATCAR_IMPORT_"
	// AdminDir is where the sidecar container alone mounts an emptyDir
	// holding the admin API's socket directory; app containers get no mount
	// of it, so they cannot reach the admin API.
	AdminDir = "/var/run/vatcar/admin"
	// AdminSocket is the admin API's Unix socket. Its directory is made by
	// the sidecar (mode 0700) inside AdminDir, whose root the kubelet owns.
	AdminSocket = AdminDir + "/private/admin.sock"
	// EnvAdmin tells `vatcar ctl` where the admin API listens; the injector
	// sets it in the sidecar container, so `kubectl exec -c vatcar --
	// /vatcar ctl list-exports` needs no flag.
	EnvAdmin = "VATCAR_ADMIN"
	// HealthPortName names the sidecar's /healthz, /readyz and /metrics
	// port.
	HealthPortName = "vatcar-health"
	// KeySecretKey is the key of the vat key Secret that holds the PEM key.
	KeySecretKey = "key.pem"

	envNamespace = "VATCAR_NAMESPACE"
	envPodName   = "VATCAR_POD_NAME"
	volKey       = "vatcar-key"
	volCaps      = "vatcar-caps"
	volImports   = "vatcar-imports"
	volProtos    = "vatcar-protos"
	volRevoked   = "vatcar-revocations"
	volAdmin     = "vatcar-admin"
	// waitForReady bounds how long a regular sidecar's postStart hook holds
	// the app containers back.
	waitForReady = "2m"
)

// plan is everything parsed from a pod before it is changed.
type plan struct {
	workload, service, keySecret string
	exports                      []Export
	imports                      []Import
	native                       bool
	protos                       string // ConfigMap of AnnotationProtoDescriptors; empty: none
	revocations                  string // ConfigMap of the revocation list; empty: none (no exports)
	cpus                         int    // --cpus; zero: the flag is left out
}

// mutate adds the sidecar to pod in place.
func (inj *Injector) mutate(pod *corev1.Pod, t Target, res *Result) error {
	p, err := inj.plan(pod, t)
	if err != nil {
		return err
	}
	if err := inj.checkConflicts(pod, p); err != nil {
		return err
	}
	sc := inj.container(p)
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range cs {
			addImportEnv(&cs[i], p.imports)
		}
	}
	if len(pod.Spec.Containers) > 0 {
		setDefault(&pod.Annotations, annotationDefaultContainer, pod.Spec.Containers[0].Name)
	}
	if p.native {
		always := corev1.ContainerRestartPolicyAlways
		sc.RestartPolicy = &always
		pod.Spec.InitContainers = append([]corev1.Container{sc}, pod.Spec.InitContainers...)
	} else {
		sc.Lifecycle = &corev1.Lifecycle{PostStart: &corev1.LifecycleHandler{
			Exec: &corev1.ExecAction{Command: inj.probeCommand("readyz", "--wait="+waitForReady)},
		}}
		pod.Spec.Containers = append([]corev1.Container{sc}, pod.Spec.Containers...)
		if rp := pod.Spec.RestartPolicy; rp == corev1.RestartPolicyNever || rp == corev1.RestartPolicyOnFailure {
			res.Warnings = append(res.Warnings, fmt.Sprintf(
				"pod with restartPolicy %s got a regular sidecar container, which keeps it running after the app exits; native sidecars (Kubernetes >= 1.%d) do not", rp, NativeSidecarMinor))
		}
	}
	pod.Spec.Volumes = append(pod.Spec.Volumes, volumes(p)...)
	setDefault(&pod.Annotations, AnnotationWorkload, p.workload)
	pod.Annotations[AnnotationStatus] = "injected"
	if _, ok := pod.Annotations[AnnotationRevocations]; ok && len(p.exports) == 0 {
		res.Warnings = append(res.Warnings, fmt.Sprintf(
			"%s is ignored: the pod exports nothing, so it has no sturdy refs to revoke", AnnotationRevocations))
	}
	for _, im := range p.imports {
		if im.URI != "" {
			res.Warnings = append(res.Warnings, fmt.Sprintf(
				"import %q carries its sturdy ref inline in %s, readable by anyone who can read the pod; prefer secret:SECRET/KEY", im.Name, AnnotationImports))
		}
	}
	if limit := inj.cfg.Resources.Limits.Cpu(); p.cpus > 0 && !limit.IsZero() && int64(p.cpus)*1000 > limit.MilliValue() {
		res.Warnings = append(res.Warnings, fmt.Sprintf(
			"the sidecar runs on %d CPUs (--cpus) but its CPU limit is %s: its threads will be throttled; raise the injector's resources.limits.cpu (chart: sidecar.resources)", p.cpus, limit))
	}
	return nil
}

// plan parses pod's annotations.
func (inj *Injector) plan(pod *corev1.Pod, t Target) (plan, error) {
	var p plan
	var err error
	if p.workload, err = workloadName(pod, t); err != nil {
		return p, err
	}
	if p.exports, err = parseExports(pod.Annotations[AnnotationExports], &pod.Spec); err != nil {
		return p, err
	}
	if p.imports, err = parseImports(pod.Annotations[AnnotationImports]); err != nil {
		return p, err
	}
	p.service = pod.Annotations[AnnotationService]
	if p.service == "" {
		p.service = p.workload
	}
	if !dnsRE.MatchString(p.service) {
		return p, badAnnotation(AnnotationService, "%q is not a DNS label", p.service)
	}
	p.keySecret = pod.Annotations[AnnotationKeySecret]
	if p.keySecret == "" && len(p.exports) > 0 {
		p.keySecret = p.workload + "-vatcar-key"
	}
	if p.keySecret != "" && !subdomRE.MatchString(p.keySecret) {
		return p, badAnnotation(AnnotationKeySecret, "%q is not a Secret name", p.keySecret)
	}
	if p.protos = pod.Annotations[AnnotationProtoDescriptors]; p.protos != "" && !subdomRE.MatchString(p.protos) {
		return p, badAnnotation(AnnotationProtoDescriptors, "%q is not a ConfigMap name", p.protos)
	}
	if len(p.exports) > 0 {
		p.revocations = pod.Annotations[AnnotationRevocations]
		if p.revocations == "" {
			p.revocations = p.workload + "-vatcar-revocations"
		}
		if !subdomRE.MatchString(p.revocations) {
			return p, badAnnotation(AnnotationRevocations, "%q is not a ConfigMap name", p.revocations)
		}
	}
	p.cpus = inj.cfg.CPUs
	if v, ok := pod.Annotations[AnnotationCPUs]; ok {
		if p.cpus, err = parseCPUs(AnnotationCPUs, v); err != nil {
			return p, err
		}
	}
	p.native = inj.cfg.nativeSidecars()
	if v, ok := pod.Annotations[AnnotationNativeSidecar]; ok {
		if p.native, err = parseSwitch(AnnotationNativeSidecar, v); err != nil {
			return p, err
		}
	}
	return p, nil
}

// checkConflicts reports ports and volume names the pod already uses.
func (inj *Injector) checkConflicts(pod *corev1.Pod, p plan) error {
	used := map[int32]string{}
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range cs {
			for _, port := range c.Ports {
				used[port.ContainerPort] = "container " + c.Name
			}
		}
	}
	claim := func(port int32, who string) error {
		if other, ok := used[port]; ok {
			return fmt.Errorf("%w: %s and %s both use port %d", ErrConflict, who, other, port)
		}
		used[port] = who
		return nil
	}
	if len(p.exports) > 0 {
		if err := claim(inj.cfg.VatPort, "the sidecar's CapTP listener"); err != nil {
			return err
		}
	}
	if err := claim(inj.cfg.HealthPort, "the sidecar's health listener"); err != nil {
		return err
	}
	envs := map[string]string{}
	for _, im := range p.imports {
		if err := claim(im.Port, "import "+im.Name); err != nil {
			return err
		}
		if other, ok := envs[envName(im.Name)]; ok {
			return fmt.Errorf("%w: imports %q and %q share the variable %s%s", ErrConflict, other, im.Name, EnvImportPrefix, envName(im.Name))
		}
		envs[envName(im.Name)] = im.Name
	}
	for _, ex := range p.exports {
		if ex.Port == inj.cfg.VatPort || ex.Port == inj.cfg.HealthPort {
			return fmt.Errorf("%w: export %s targets the sidecar's own port %d", ErrConflict, ex.Name, ex.Port)
		}
	}
	for _, v := range pod.Spec.Volumes {
		switch v.Name {
		case volKey, volCaps, volImports, volProtos, volRevoked, volAdmin:
			return fmt.Errorf("%w: the pod already has a volume named %s", ErrConflict, v.Name)
		}
	}
	return nil
}

// container builds the sidecar container.
func (inj *Injector) container(p plan) corev1.Container {
	c := inj.cfg
	health := net.JoinHostPort(c.HealthAddress, strconv.Itoa(int(c.HealthPort)))
	args := []string{"run"}
	mounts := []corev1.VolumeMount{{Name: volAdmin, MountPath: AdminDir}}
	ports := []corev1.ContainerPort{{Name: HealthPortName, ContainerPort: c.HealthPort, Protocol: corev1.ProtocolTCP}}
	if len(p.exports) > 0 {
		args = append(args,
			fmt.Sprintf("--listen=tcp:0.0.0.0:%d", c.VatPort),
			fmt.Sprintf("--public-address=tcp:%s.$(%s).svc.%s:%d", p.service, envNamespace, c.ClusterDomain, c.VatPort),
		)
		ports = append(ports, corev1.ContainerPort{Name: VatPortName, ContainerPort: c.VatPort, Protocol: corev1.ProtocolTCP})
	}
	if p.keySecret != "" {
		args = append(args, "--secret-key-file="+KeyDir+"/"+KeySecretKey)
		mounts = append(mounts, corev1.VolumeMount{Name: volKey, MountPath: KeyDir, ReadOnly: true})
	} // else an ephemeral key: the sidecar keeps it in memory only.
	if len(p.exports) > 0 {
		args = append(args, "--cap-dir="+CapDir)
		mounts = append(mounts, corev1.VolumeMount{Name: volCaps, MountPath: CapDir})
	}
	args = append(args, "--admin-listen=unix:"+AdminSocket, "--health-listen="+health)
	for _, ex := range p.exports {
		args = append(args, fmt.Sprintf("--export=%s=127.0.0.1:%d", ex.Name, ex.Port))
	}
	secretImports := false
	for _, im := range p.imports {
		src := im.URI
		if src == "" {
			src = "@" + ImportDir + "/" + im.Name + ".cap"
			secretImports = true
		}
		args = append(args, fmt.Sprintf("--import=%s=%s,listen=127.0.0.1:%d", im.Name, src, im.Port))
	}
	if secretImports {
		mounts = append(mounts, corev1.VolumeMount{Name: volImports, MountPath: ImportDir, ReadOnly: true})
	}
	if p.protos != "" {
		args = append(args, "--proto-descriptors="+ProtoDir+"/"+ProtoDescriptorsKey)
		mounts = append(mounts, corev1.VolumeMount{Name: volProtos, MountPath: ProtoDir, ReadOnly: true})
	}
	if p.revocations != "" {
		args = append(args, "--revocations="+RevocationsDir+"/"+RevocationsKey)
		mounts = append(mounts, corev1.VolumeMount{Name: volRevoked, MountPath: RevocationsDir, ReadOnly: true})
	}
	if p.cpus > 0 {
		args = append(args, fmt.Sprintf("--cpus=%d", p.cpus))
	}
	if c.LogFormat != "" {
		args = append(args, "--log-format="+c.LogFormat)
	}
	args = append(args, c.ExtraArgs...)

	uid := c.RunAsUser
	return corev1.Container{
		Name:            SidecarName,
		Image:           c.Image,
		ImagePullPolicy: c.ImagePullPolicy,
		Args:            args,
		Ports:           ports,
		Env: []corev1.EnvVar{
			{Name: envNamespace, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
			{Name: envPodName, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
			{Name: EnvAdmin, Value: "unix:" + AdminSocket},
		},
		Resources:    *c.Resources.DeepCopy(),
		VolumeMounts: mounts,
		StartupProbe: &corev1.Probe{
			ProbeHandler:     inj.httpProbe("readyz"),
			PeriodSeconds:    1,
			TimeoutSeconds:   3,
			FailureThreshold: 300,
		},
		ReadinessProbe: &corev1.Probe{
			ProbeHandler:     inj.httpProbe("readyz"),
			PeriodSeconds:    5,
			TimeoutSeconds:   3,
			FailureThreshold: 3,
		},
		LivenessProbe: &corev1.Probe{
			ProbeHandler:     inj.httpProbe("healthz"),
			PeriodSeconds:    10,
			TimeoutSeconds:   3,
			FailureThreshold: 6,
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             ptr(true),
			RunAsUser:                ptr(uid),
			RunAsGroup:               ptr(uid),
			ReadOnlyRootFilesystem:   ptr(true),
			AllowPrivilegeEscalation: ptr(false),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
}

// httpProbe is a kubelet httpGet of the health listener's path on the pod's
// IP.
func (inj *Injector) httpProbe(path string) corev1.ProbeHandler {
	return corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
		Path:   "/" + path,
		Port:   intstr.FromString(HealthPortName),
		Scheme: corev1.URISchemeHTTP,
	}}
}

// probeCommand runs `vatcar inject probe` against the health listener's
// path from inside the sidecar container: the regular sidecar's postStart
// hook, which waits until the sidecar is ready before the app containers
// start (a hook has no retries of its own).
func (inj *Injector) probeCommand(path string, flags ...string) []string {
	host := inj.cfg.HealthAddress
	switch host {
	case "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	url := "http://" + net.JoinHostPort(host, strconv.Itoa(int(inj.cfg.HealthPort))) + "/" + path
	cmd := []string{SidecarBinary, "inject", "probe"}
	cmd = append(cmd, flags...)
	return append(cmd, url)
}

// volumes returns the volumes the sidecar mounts.
func volumes(p plan) []corev1.Volume {
	readOnly := int32(0o444)
	small := resource.MustParse("1Mi")
	var vs []corev1.Volume
	if p.keySecret != "" {
		vs = append(vs, corev1.Volume{Name: volKey, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName:  p.keySecret,
			Items:       []corev1.KeyToPath{{Key: KeySecretKey, Path: KeySecretKey}},
			DefaultMode: &readOnly,
		}}})
	}
	if len(p.exports) > 0 {
		vs = append(vs, corev1.Volume{Name: volCaps, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{
			Medium: corev1.StorageMediumMemory, SizeLimit: &small,
		}}})
	}
	var sources []corev1.VolumeProjection
	for _, im := range p.imports {
		if im.Secret == "" {
			continue
		}
		sources = append(sources, corev1.VolumeProjection{Secret: &corev1.SecretProjection{
			LocalObjectReference: corev1.LocalObjectReference{Name: im.Secret},
			Items:                []corev1.KeyToPath{{Key: im.SecretKey, Path: im.Name + ".cap"}},
		}})
	}
	if len(sources) > 0 {
		vs = append(vs, corev1.Volume{Name: volImports, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			Sources: sources, DefaultMode: &readOnly,
		}}})
	}
	if p.protos != "" {
		vs = append(vs, corev1.Volume{Name: volProtos, VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: p.protos},
			Items:                []corev1.KeyToPath{{Key: ProtoDescriptorsKey, Path: ProtoDescriptorsKey}},
			DefaultMode:          &readOnly,
		}}})
	}
	if p.revocations != "" {
		vs = append(vs, corev1.Volume{Name: volRevoked, VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: p.revocations},
			Items:                []corev1.KeyToPath{{Key: RevocationsKey, Path: RevocationsKey}},
			DefaultMode:          &readOnly,
			Optional:             ptr(true),
		}}})
	}
	// The admin socket's directory: mounted into the sidecar alone.
	vs = append(vs, corev1.Volume{Name: volAdmin, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{
		Medium: corev1.StorageMediumMemory, SizeLimit: &small,
	}}})
	return vs
}

// addImportEnv tells an app container where each import listens, unless it
// already sets the variable.
func addImportEnv(c *corev1.Container, imports []Import) {
	for _, im := range imports {
		name := EnvImportPrefix + envName(im.Name)
		if hasEnv(c, name) {
			continue
		}
		c.Env = append(c.Env, corev1.EnvVar{Name: name, Value: fmt.Sprintf("127.0.0.1:%d", im.Port)})
	}
}

func hasEnv(c *corev1.Container, name string) bool {
	for _, e := range c.Env {
		if e.Name == name {
			return true
		}
	}
	return false
}

// setDefault sets m[k] = v unless m already has k.
func setDefault(m *map[string]string, k, v string) {
	if *m == nil {
		*m = map[string]string{}
	}
	if _, ok := (*m)[k]; !ok {
		(*m)[k] = v
	}
}

func ptr[T any](v T) *T { return &v }
