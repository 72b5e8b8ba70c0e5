#!/usr/bin/env bash
# Regenerates every generated Go file in the repository: capnpc-go for each
# .capnp schema (written beside it), protoc for the admin API. Run
# tools/install.sh first for the pinned generators; `make generate` does both.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$(go env GOPATH)/bin:$PATH"

capnp_std="$(go list -m -f '{{.Dir}}' capnproto.org/go/capnp/v3)/std"
pgv="$(go list -m -f '{{.Dir}}' github.com/envoyproxy/protoc-gen-validate)"
module="$(go list -m)"

while IFS= read -r schema; do
  dir="$(dirname "$schema")"
  capnp compile -I "$capnp_std" --src-prefix="$dir" -ogo:"$dir" "$schema"
done < <(find . -name '*.capnp' -not -path './.git/*' | sort)

protos=$(cd proto && find . -name '*.proto' | sort)
(cd proto && protoc -I . -I "$pgv" \
  --go_out=. --go_opt=paths=source_relative \
  --go-grpc_out=. --go-grpc_opt=paths=source_relative \
  --validate_out=lang=go,paths=source_relative:. \
  $protos)
gofmt -w $(find . -name '*.capnp.go' -not -path './.git/*')
