#!/usr/bin/env bash
# Installs the pinned tools that code generation and CI need.
# Debian packages when missing (capnproto, protobuf-compiler; nginx and haproxy, the peer
# proxy pairs bench/ measures and tests; libcapnp-dev, g++ and pkg-config, the C++ reference
# peer vat's tests build), Go tools by exact version.
set -euo pipefail

# nginx and haproxy live in /usr/sbin, which a non-root PATH may lack.
if ! command -v capnp >/dev/null || ! command -v protoc >/dev/null ||
  [ ! -x /usr/sbin/nginx ] || [ ! -x /usr/sbin/haproxy ] ||
  ! command -v g++ >/dev/null || ! pkg-config --exists capnp-rpc 2>/dev/null; then
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq
  # The tests start their own nginx and haproxy instances on free loopback ports.
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq capnproto protobuf-compiler nginx haproxy \
    libcapnp-dev g++ pkg-config >/dev/null
fi

# Versions are pinned: capnpc-go must match the capnp runtime in go.mod.
tools=(
  capnproto.org/go/capnp/v3/capnpc-go@v3.1.0-alpha.2
  google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
  google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
  github.com/envoyproxy/protoc-gen-validate@v1.3.3
  honnef.co/go/tools/cmd/staticcheck@v0.8.2
)
for t in "${tools[@]}"; do
  go install "$t"
done

# helm renders and lints the chart in k8s/ tests; skipped when the pinned version, built with
# the version ldflags, is already there. A plain `go install` of helm lacks the -X flags its
# Makefile sets, and then reports Kubernetes v1.20.0 as the cluster version (helm template
# refuses the chart's kubeVersion) and an empty helm version. These are helm v3.22.0's
# Makefile flags: k8s.io/client-go v0.37.0 there, so Kubernetes 1.37.
helm_version=v3.22.0
helm_ldflags="-X helm.sh/helm/v3/internal/version.version=$helm_version
  -X helm.sh/helm/v3/internal/version.metadata=
  -X helm.sh/helm/v3/internal/version.gitTreeState=clean
  -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1
  -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=37
  -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1
  -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=37"
helm_ldflags=$(tr -s ' \n' ' ' <<<"$helm_ldflags")
helm_info=$(go version -m "$(go env GOPATH)/bin/helm" 2>/dev/null || true)
if ! grep -q "helm.sh/helm/v3[[:space:]]*${helm_version//./\\.}[[:space:]]" <<<"$helm_info" ||
  ! grep -q 'chartutil.k8sVersionMinor=37' <<<"$helm_info"; then
  go install -ldflags "$helm_ldflags" "helm.sh/helm/v3/cmd/helm@$helm_version"
fi
