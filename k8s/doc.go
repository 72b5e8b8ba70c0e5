// Package k8s injects the vatcar sidecar into Kubernetes pods.
//
// Its core is a pure function, [Injector.Inject], from a pod, the injector's
// [Config] and the pod's annotations to the mutated pod; [Injector.Patch]
// turns the same result into the RFC 6902 JSON patch an admission webhook
// answers with. Around that core sit two thin adapters: [InjectManifests]
// (`vatcar inject -f`), which rewrites multi-document YAML, and [Handler] and
// [Server] (`vatcar inject serve`), the mutating admission webhook over HTTPS
// with a certificate reloaded when its files change. [Injector.Check]
// (`vatcar check`) is an offline preflight of manifests: what a workload's
// sidecar needs besides its pod (key Secret, Service, import Secrets). The Helm chart
// (helm/vatcar) and plain manifests (manifests/) that install the webhook live
// beside the package.
//
// The package does not run the sidecar (that is package sidecar), talks to no
// Kubernetes API server, and creates no Secrets: the per-workload vat key and
// the published cap files are Secrets the user creates (see README.md).
package k8s
