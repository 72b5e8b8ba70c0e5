// Package k8s injects the vatcar sidecar into Kubernetes workloads.
//
// It holds the pure injection function, the `vatcar inject -f` manifest
// rewriter and the mutating admission webhook; the Helm chart and plain
// manifests live beside it. It does not run the sidecar.
package k8s
