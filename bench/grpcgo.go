package main

import (
	"context"
	"fmt"
	"path/filepath"
	"time"
)

// Two reference paths run bench/grpcproxy, a plain grpc-go proxy with vatcar's grpc-go
// settings, sockets (raw reads and writes, PING ACKs held on the h2c sides) and
// runtime defaults:
//
//   - grpcgo-tls is client -> grpcproxy (h2c) -> gRPC over TLS 1.3 -> grpcproxy ->
//     backend (h2c): a reference pair, two grpc-go servers and two clients where
//     vatcar's pair runs one of each plus a Cap'n Proto hop. It is an alternative
//     design, not a lower bound under vatcar's figures.
//   - grpcgo-h2c is client -> grpcproxy -> backend, h2c both sides: one grpc-go server
//     and one grpc-go client with vatcar's settings, the grpc-go share of vatcar's
//     pair, measured in the same run.
//
// Neither is a peer: no one would deploy them instead of vatcar. They are not among
// peerPaths, never the best peer, the targets ignore them, and no open-streams row is
// measured through them.

// pkgGrpcproxy is the reference proxy's package.
const pkgGrpcproxy = "./bench/grpcproxy"

// buildGrpcproxy builds bench/grpcproxy into dir as the sidecar's binary is built.
func buildGrpcproxy(ctx context.Context, dir string) (string, error) {
	return buildCommand(ctx, dir, pkgGrpcproxy, "grpcproxy", "run from the repository")
}

// grpcgoMaxMessage is the proxies' --max-message-size in bytes: 8 MiB, as
// vatcarMaxMessage.
const grpcgoMaxMessage = "8388608"

// grpcgoOptions are what the reference proxies share with the sidecars of the run.
type grpcgoOptions struct {
	// Protoset is the descriptor set the sidecars get (--proto-descriptors): the
	// proxies read a single-message request on the handler's goroutine for the same
	// methods. Empty: every call has a request goroutine (--no-descriptors).
	Protoset string
	// Env is the sidecars' extra environment (--vatcar-env), given to the proxies too:
	// GOMAXPROCS, GOGC and GOMEMLIMIT set there override the runtime defaults both
	// copy from `vatcar run`.
	Env []string
	// Pprof serves /debug/pprof on each proxy's admin port.
	Pprof bool
}

// args returns the command-line arguments every proxy gets.
func (o grpcgoOptions) args() []string {
	a := []string{"--max-message-size", grpcgoMaxMessage}
	if o.Protoset != "" {
		a = append(a, "--proto-descriptors", o.Protoset)
	}
	if o.Pprof {
		a = append(a, "--pprof")
	}
	return a
}

// freePorts returns n 127.0.0.1 ports that were free a moment ago.
func freePorts(n int) ([]string, error) {
	addrs := make([]string, n)
	for i := range addrs {
		a, err := freePort()
		if err != nil {
			return nil, err
		}
		addrs[i] = a
	}
	return addrs, nil
}

// startGrpcgo writes a TLS certificate into dir, starts the back proxy (TLS 1.3 in
// front of the backend), then the front one (h2c, dialing the back with TLS 1.3), and
// waits until a call goes through. Each serves /metrics on an admin port, and with
// pprof /debug/pprof there too. A proxy that exits wraps errSkipped with its last
// output.
func startGrpcgo(ctx context.Context, bin, dir, backendAddr string, o grpcgoOptions) (*proxyPair, error) {
	cert, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := writeSelfSigned(cert, key); err != nil {
		return nil, err
	}
	addrs, err := freePorts(4)
	if err != nil {
		return nil, err
	}
	frontAddr, backAddr, frontAdmin, backAdmin := addrs[0], addrs[1], addrs[2], addrs[3]
	g := &proxyPair{name: pathGrpcgo, target: frontAddr, hop: backAddr}
	back, err := startProcess("grpcgo back", bin, append([]string{
		"--listen", backAddr, "--tls-cert", cert, "--tls-key", key,
		"--target", backendAddr, "--admin-listen", backAdmin,
	}, o.args()...), o.Env, filepath.Join(dir, "back.log"))
	if err != nil {
		return nil, err
	}
	g.back = back
	front, err := startProcess("grpcgo front", bin, append([]string{
		"--listen", frontAddr, "--target", backAddr, "--target-tls", "--admin-listen", frontAdmin,
	}, o.args()...), o.Env, filepath.Join(dir, "front.log"))
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
	if o.Pprof {
		frontPprof, backPprof = frontAdmin, backAdmin
	}
	g.instances = []instance{
		{Name: "grpcgo front", PIDs: []int{g.front.PID()}, Pprof: frontPprof, Metrics: frontAdmin},
		{Name: "grpcgo back", PIDs: []int{g.back.PID()}, Pprof: backPprof, Metrics: backAdmin},
	}
	return g, nil
}

// startGrpcgoH2C starts one proxy, h2c on both sides, in front of the backend and
// waits until a call goes through. It serves /metrics on an admin port, and with
// pprof /debug/pprof there too. A proxy that exits wraps errSkipped with its last
// output.
func startGrpcgoH2C(ctx context.Context, bin, dir, backendAddr string, o grpcgoOptions) (*proxyPair, error) {
	addrs, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	addr, admin := addrs[0], addrs[1]
	g := &proxyPair{name: pathGrpcgoH2C, target: addr}
	g.front, err = startProcess("grpcgo h2c", bin, append([]string{
		"--listen", addr, "--target", backendAddr, "--admin-listen", admin,
	}, o.args()...), o.Env, filepath.Join(dir, "grpcproxy.log"))
	if err != nil {
		return nil, err
	}
	if err := waitReady(ctx, addr, 60*time.Second, g.front); err != nil {
		g.Close()
		return nil, fmt.Errorf("%w: grpcgo-h2c proxy: %w", errSkipped, err)
	}
	pprofAddr := ""
	if o.Pprof {
		pprofAddr = admin
	}
	g.instances = []instance{{Name: "grpcgo h2c", PIDs: []int{g.front.PID()}, Pprof: pprofAddr, Metrics: admin}}
	return g, nil
}
