package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
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

// startGrpcproxy starts one proxy named name (its log and address file in dir,
// named after file) with args, listening and serving its admin port on ports the
// kernel picks, and returns once it tells them (--addr-file): no race for a port
// found free a moment before.
func startGrpcproxy(ctx context.Context, name, file, bin, dir string, args []string, o grpcgoOptions) (p *process, listen, admin string, err error) {
	addrFile := filepath.Join(dir, file+".addrs")
	args = append(append([]string{"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--addr-file", addrFile}, args...), o.args()...)
	p, err = startProcess(name, bin, args, o.Env, filepath.Join(dir, file+".log"))
	if err != nil {
		return nil, "", "", err
	}
	listen, admin, err = waitAddrFile(ctx, addrFile, 60*time.Second, p)
	if err != nil {
		p.Stop()
		return nil, "", "", fmt.Errorf("%w: %s: %w", errSkipped, name, err)
	}
	return p, listen, admin, nil
}

// waitAddrFile polls for a proxy's --addr-file until it is there, the process exits
// or the timeout passes, and returns its listen and admin addresses.
func waitAddrFile(ctx context.Context, file string, timeout time.Duration, p *process) (listen, admin string, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		b, err := os.ReadFile(file)
		if err == nil {
			for line := range strings.SplitSeq(string(b), "\n") {
				switch k, v, _ := strings.Cut(line, " "); k {
				case "listen":
					listen = v
				case "admin":
					admin = v
				}
			}
			if listen == "" || admin == "" {
				return "", "", fmt.Errorf("address file %s: got %q, want listen and admin lines", file, b)
			}
			return listen, admin, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", "", fmt.Errorf("address file: %w", err)
		}
		select {
		case <-p.done:
			return "", "", p.exited()
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return "", "", fmt.Errorf("no address file %s after %v", file, timeout)
			}
			return "", "", fmt.Errorf("no address file %s: %w", file, ctx.Err())
		case <-tick.C:
		}
	}
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
	g := &proxyPair{name: pathGrpcgo}
	back, backAddr, backAdmin, err := startGrpcproxy(ctx, "grpcgo back", "back", bin, dir, []string{
		"--tls-cert", cert, "--tls-key", key, "--target", backendAddr,
	}, o)
	if err != nil {
		return nil, err
	}
	g.back, g.hop = back, backAddr
	front, frontAddr, frontAdmin, err := startGrpcproxy(ctx, "grpcgo front", "front", bin, dir, []string{
		"--target", backAddr, "--target-tls",
	}, o)
	if err != nil {
		g.Close()
		return nil, err
	}
	g.front, g.target = front, frontAddr
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
	proc, addr, admin, err := startGrpcproxy(ctx, "grpcgo h2c", "grpcproxy", bin, dir, []string{"--target", backendAddr}, o)
	if err != nil {
		return nil, err
	}
	g := &proxyPair{name: pathGrpcgoH2C, target: addr, front: proc}
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
