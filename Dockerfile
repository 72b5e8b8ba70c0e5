# syntax=docker/dockerfile:1
# The vatcar images, two static binaries from one build stage, each at /vatcar
# on distroless, running as a non-root user:
#
#   docker build -t ghcr.io/vatcar/vatcar .                              the sidecar (default, last stage)
#   docker build --target injector -t ghcr.io/vatcar/vatcar-injector .   the injector
#
# The sidecar image runs `vatcar run` and the probes the injector writes
# (`vatcar inject probe`); it is built with -tags nok8s (tools/build.sh
# --sidecar), without the Kubernetes packages, for a smaller idle RSS. The
# injector image has the full binary (`vatcar inject serve`, `inject -f`,
# `inject selftest` for helm test, and every other command).

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
# The release's version (--build-arg VATCAR_VERSION=v1.2.3): the context has no
# .git to read it from; empty: `vatcar version` says (devel).
ARG VATCAR_VERSION=""
# The same commands CI runs (tools/build.sh): CGO_ENABLED=0 go build -trimpath.
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    bash tools/build.sh /out/vatcar && bash tools/build.sh --sidecar /out/vatcar-sidecar

FROM gcr.io/distroless/static-debian12:nonroot AS injector
COPY --from=build /out/vatcar /vatcar
# distroless "nonroot" is 65532:65532; numeric so runAsNonRoot can check it.
USER 65532:65532
ENTRYPOINT ["/vatcar"]
CMD ["inject", "--help"]

FROM gcr.io/distroless/static-debian12:nonroot AS sidecar
COPY --from=build /out/vatcar-sidecar /vatcar
USER 65532:65532
ENTRYPOINT ["/vatcar"]
CMD ["run"]
