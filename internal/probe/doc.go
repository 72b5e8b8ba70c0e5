// Package probe checks an HTTP health endpoint: the client behind `vatcar
// inject probe`, which the injected regular sidecar's start-up gate (a
// postStart hook) execs,
// and the chart's self-test. It imports no Kubernetes package, so the
// sidecar-only build (-tags nok8s) has it.
package probe
