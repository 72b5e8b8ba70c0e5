#!/usr/bin/env bash
# Installs the pinned tools that code generation and CI need.
# Debian packages (capnproto, protobuf-compiler) when missing, Go tools by exact version.
set -euo pipefail

if ! command -v capnp >/dev/null || ! command -v protoc >/dev/null; then
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq capnproto protobuf-compiler >/dev/null
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

# helm renders and lints the chart in k8s/ tests; skipped when the pinned version is already there.
helm_info=$(go version -m "$(go env GOPATH)/bin/helm" 2>/dev/null || true)
if ! grep -q 'helm.sh/helm/v3[[:space:]]*v3\.22\.0[[:space:]]' <<<"$helm_info"; then
  go install helm.sh/helm/v3/cmd/helm@v3.22.0
fi
