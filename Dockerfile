# syntax=docker/dockerfile:1
# The vatcar image: the sidecar (`vatcar run`) and its injector (`vatcar inject
# serve`) are one static binary on distroless, running as a non-root user.
#
#   docker build -t vatcar .

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
# The same command CI runs (tools/build.sh): CGO_ENABLED=0 go build -trimpath.
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    bash tools/build.sh /out/vatcar

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/vatcar /vatcar
# distroless "nonroot" is 65532:65532; numeric so runAsNonRoot can check it.
USER 65532:65532
ENTRYPOINT ["/vatcar"]
CMD ["run"]
