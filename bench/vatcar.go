package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// vatcarPair is client -> vatcar (import) -> CapTP over TLS -> vatcar (export) ->
// backend: two processes of the real binary.
type vatcarPair struct {
	target    string
	imp, exp  *process
	instances []instance
}

func (v *vatcarPair) Name() string          { return pathVatcar }
func (v *vatcarPair) Target() string        { return v.target }
func (v *vatcarPair) Instances() []instance { return v.instances }

func (v *vatcarPair) Exited() error { return firstExited(v.imp, v.exp) }

func (v *vatcarPair) Close() {
	for _, p := range []*process{v.imp, v.exp} {
		if p != nil {
			p.Stop()
		}
	}
}

// The packages buildVatcar builds: the real binary, or the same sidecar with
// net/http/pprof for --pprof-dir.
const (
	pkgVatcar     = "./cmd/vatcar"
	pkgVatcarProf = "./bench/vatcarprof"
)

// buildVatcar builds pkg of the module in the working directory into dir the way
// tools/build.sh --sidecar builds the sidecar image's binary (static, no cgo,
// stripped, -tags nok8s: without the Kubernetes injector), so that the memory
// rows measure what ships: a cgo build maps libc and the dynamic loader, 1.3-2 MiB
// more RSS per sidecar, and the injector's packages about 4 MiB. A failure wraps
// errSkipped with the compiler's last lines.
func buildVatcar(ctx context.Context, dir, pkg string) (string, error) {
	return buildCommand(ctx, dir, pkg, "vatcar", "run from the repository or pass --vatcar")
}

// buildCommand builds pkg of the module in the working directory into dir/name as
// buildVatcar does; hint says what to do outside the module.
func buildCommand(ctx context.Context, dir, pkg, name, hint string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("%w: not inside the vatcar module (go env GOMOD: %q): %s", errSkipped, gomod, hint)
	}
	bin := filepath.Join(dir, name)
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-tags=nok8s", "-o", bin, pkg)
	cmd.Dir = filepath.Dir(gomod)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%w: go build %s: %v: %s", errSkipped, pkg, err, lastLines(string(out), 3))
	}
	return bin, nil
}

// vatcarMaxMessage is the --max-message-size both sidecars get: the 4 MiB scenario
// echoes exactly 4 MiB, the sidecar's default limit, so it needs a little more.
const vatcarMaxMessage = "8MiB"

// vatcarMaxCalls is both sidecars' --max-concurrent-calls: above the 10,000 streams the
// memory row holds open over one peer connection (the default is 1,024), which the
// importer shares among the row's 10 app connections (about N/11 each when they grow
// together: docs/design.md).
const vatcarMaxCalls = "16384"

// startVatcar starts the exporting sidecar in front of the backend, waits for its cap
// file, starts the importing sidecar on a local port, and waits until a call goes
// through. extra is appended to both command lines and env to both environments. With pprof, each sidecar gets
// VATCAR_PPROF_LISTEN (see bench/vatcarprof). A sidecar that exits wraps errSkipped
// with its last output.
func startVatcar(ctx context.Context, bin, dir, backendAddr string, extra, env []string, pprof bool) (path, error) {
	capDir := filepath.Join(dir, "caps")
	if err := os.MkdirAll(capDir, 0o700); err != nil {
		return nil, fmt.Errorf("cap dir: %w", err)
	}
	var addrs [6]string
	for i := range addrs {
		a, err := freePort()
		if err != nil {
			return nil, err
		}
		addrs[i] = a
	}
	listen, expAdmin, target, impAdmin := addrs[0], addrs[1], addrs[2], addrs[3]
	expEnv, impEnv := env, env
	expPprof, impPprof := "", ""
	if pprof {
		expPprof, impPprof = addrs[4], addrs[5]
		expEnv = append(slices.Clip(env), "VATCAR_PPROF_LISTEN="+expPprof)
		impEnv = append(slices.Clip(env), "VATCAR_PPROF_LISTEN="+impPprof)
	}
	v := &vatcarPair{target: target}
	expArgs := append([]string{"run",
		"--listen", "tcp:" + listen,
		"--secret-key-file", filepath.Join(dir, "export.pem"),
		"--export", "bench=" + backendAddr,
		"--cap-dir", capDir,
		"--admin-listen", expAdmin,
		"--max-message-size", vatcarMaxMessage,
		"--max-concurrent-calls", vatcarMaxCalls,
	}, extra...)
	p, err := startProcess("vatcar export", bin, expArgs, expEnv, filepath.Join(dir, "export.log"))
	if err != nil {
		return nil, err
	}
	v.exp = p
	capFile := filepath.Join(capDir, "bench.cap")
	if err := waitFile(ctx, capFile, 60*time.Second, v.exp); err != nil {
		v.Close()
		return nil, fmt.Errorf("%w: vatcar export: %w", errSkipped, err)
	}
	impArgs := append([]string{"run",
		"--secret-key-file", filepath.Join(dir, "import.pem"),
		"--import", "bench=@" + capFile + ",listen=" + target,
		"--admin-listen", impAdmin,
		"--max-message-size", vatcarMaxMessage,
		"--max-concurrent-calls", vatcarMaxCalls,
	}, extra...)
	p, err = startProcess("vatcar import", bin, impArgs, impEnv, filepath.Join(dir, "import.log"))
	if err != nil {
		v.Close()
		return nil, err
	}
	v.imp = p
	if err := waitReady(ctx, target, 60*time.Second, v.imp, v.exp); err != nil {
		v.Close()
		return nil, fmt.Errorf("%w: vatcar pair: %w", errSkipped, err)
	}
	v.instances = []instance{
		{Name: "vatcar import", PIDs: []int{v.imp.PID()}, Pprof: impPprof, Metrics: impAdmin},
		{Name: "vatcar export", PIDs: []int{v.exp.PID()}, Pprof: expPprof, Metrics: expAdmin},
	}
	return v, nil
}
