package main

import (
	"context"
	"fmt"
	"path/filepath"
	"time"
)

// The grpcgo-tls path is client -> grpc-go proxy (h2c) -> gRPC over TLS 1.3 -> grpc-go
// proxy -> backend (h2c): two processes of bench/grpcproxy, a plain grpc-go proxy with
// vatcar's best-case grpc-go settings and runtime defaults. It is a reference, not a
// peer: no one would deploy it instead of vatcar, but it measures what grpc-go's server
// and client cost a proxy pair on this machine in this run, the floor under the
// sidecars' figures (each sidecar runs one grpc-go server or client of its own). It
// is not among peerPaths, the targets ignore it, and no open-streams row is measured
// through it.

// pkgGrpcproxy is the reference proxy's package.
const pkgGrpcproxy = "./bench/grpcproxy"

// buildGrpcproxy builds bench/grpcproxy into dir as the sidecar's binary is built.
func buildGrpcproxy(ctx context.Context, dir string) (string, error) {
	return buildCommand(ctx, dir, pkgGrpcproxy, "grpcproxy", "run from the repository")
}

// grpcgoMaxMessage is both proxies' --max-message-size in bytes: 8 MiB, as
// vatcarMaxMessage.
const grpcgoMaxMessage = "8388608"

// startGrpcgo writes a TLS certificate into dir, starts the back proxy (TLS 1.3 in
// front of the backend), then the front one (h2c, dialing the back with TLS 1.3), and
// waits until a call goes through. Each serves /metrics on an admin port, and with
// pprof /debug/pprof there too. A proxy that exits wraps errSkipped with its last
// output.
func startGrpcgo(ctx context.Context, bin, dir, backendAddr string, pprof bool) (*proxyPair, error) {
	cert, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := writeSelfSigned(cert, key); err != nil {
		return nil, err
	}
	var addrs [4]string
	for i := range addrs {
		a, err := freePort()
		if err != nil {
			return nil, err
		}
		addrs[i] = a
	}
	frontAddr, backAddr, frontAdmin, backAdmin := addrs[0], addrs[1], addrs[2], addrs[3]
	common := []string{"--max-message-size", grpcgoMaxMessage}
	if pprof {
		common = append(common, "--pprof")
	}
	g := &proxyPair{name: pathGrpcgo, target: frontAddr, hop: backAddr}
	back, err := startProcess("grpcgo back", bin, append([]string{
		"--listen", backAddr, "--tls-cert", cert, "--tls-key", key,
		"--target", backendAddr, "--admin-listen", backAdmin,
	}, common...), nil, filepath.Join(dir, "back.log"))
	if err != nil {
		return nil, err
	}
	g.back = back
	front, err := startProcess("grpcgo front", bin, append([]string{
		"--listen", frontAddr, "--target", backAddr, "--target-tls", "--admin-listen", frontAdmin,
	}, common...), nil, filepath.Join(dir, "front.log"))
	if err != nil {
		g.Close()
		return nil, err
	}
	g.front = front
	if err := waitReady(ctx, frontAddr, 60*time.Second, g.front, g.back); err != nil {
		g.Close()
		return nil, fmt.Errorf("%w: grpcgo pair: %w", errSkipped, err)
	}
	frontPprof, backPprof := "", ""
	if pprof {
		frontPprof, backPprof = frontAdmin, backAdmin
	}
	g.instances = []instance{
		{Name: "grpcgo front", PIDs: []int{g.front.PID()}, Pprof: frontPprof, Metrics: frontAdmin},
		{Name: "grpcgo back", PIDs: []int{g.back.PID()}, Pprof: backPprof, Metrics: backAdmin},
	}
	return g, nil
}
