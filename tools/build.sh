#!/usr/bin/env bash
# Builds the static vatcar binary. This is the one build command: the
# Dockerfile's build stage runs it, and so does CI, so CI proves the image's
# build step.
# usage: tools/build.sh [OUTPUT]             the full binary, every command (default: bin/vatcar);
#                                            the injector image's, and the default everywhere else
#        tools/build.sh --sidecar [OUTPUT]   the sidecar image's binary (default: bin/vatcar-sidecar)
# --sidecar adds -tags nok8s: the same `vatcar run` without the Kubernetes
# packages (k8s.io/..., linked only for the injector), so an idle sidecar has
# about 4 MiB less RSS. It keeps `vatcar inject probe` (the injected sidecar's
# probes); its `vatcar inject -f/serve/selftest` exit 2 naming the injector image.
# VATCAR_VERSION=v1.2.3 stamps that version (`vatcar version`, the image tag `inject -f`
# defaults to) where the Go toolchain cannot read one from git (the Dockerfile's build
# context has no .git); unset, a build in a git work tree gets the module's VCS version.
set -euo pipefail
tags=()
default=bin/vatcar
if [ "${1:-}" = "--sidecar" ]; then
  tags=(-tags nok8s)
  default=bin/vatcar-sidecar
  shift
fi
case "${1:-}" in
  -*) echo "usage: tools/build.sh [--sidecar] [OUTPUT]" >&2; exit 2 ;;
esac
out="$(realpath -m "${1:-$default}")"
cd "$(dirname "$0")/.."
ldflags="-s -w"
if [ -n "${VATCAR_VERSION:-}" ]; then
  ldflags+=" -X github.com/vatcar/vatcar/internal/buildinfo.stamped=$VATCAR_VERSION"
fi
CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" ${tags[@]+"${tags[@]}"} -o "$out" ./cmd/vatcar
echo "built $out"
