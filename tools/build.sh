#!/usr/bin/env bash
# Builds the static vatcar binary. This is the one build command: the
# Dockerfile's build stage runs it, and so does CI, so CI proves the image's
# build step.
# usage: tools/build.sh [OUTPUT]      (default: bin/vatcar)
set -euo pipefail
out="$(realpath -m "${1:-bin/vatcar}")"
cd "$(dirname "$0")/.."
CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$out" ./cmd/vatcar
echo "built $out"
