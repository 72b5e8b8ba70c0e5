package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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

func (v *vatcarPair) Close() {
	for _, p := range []*process{v.imp, v.exp} {
		if p != nil {
			p.Stop()
		}
	}
}

// buildVatcar builds ./cmd/vatcar of the module in the working directory into dir.
// A failure wraps errSkipped with the compiler's last lines.
func buildVatcar(ctx context.Context, dir string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("%w: not inside the vatcar module (go env GOMOD: %q): run from the repository or pass --vatcar", errSkipped, gomod)
	}
	bin := filepath.Join(dir, "vatcar")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/vatcar")
	cmd.Dir = filepath.Dir(gomod)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%w: go build ./cmd/vatcar: %v: %s", errSkipped, err, lastLines(string(out), 3))
	}
	return bin, nil
}

// startVatcar starts the exporting sidecar in front of the backend, waits for its cap
// file, starts the importing sidecar on a local port, and waits until a call goes
// through. extra is appended to both command lines. A sidecar that exits wraps
// errSkipped with its last output.
func startVatcar(ctx context.Context, bin, dir, backendAddr string, extra []string) (path, error) {
	capDir := filepath.Join(dir, "caps")
	var addrs [4]string
	for i := range addrs {
		a, err := freePort()
		if err != nil {
			return nil, err
		}
		addrs[i] = a
	}
	listen, expAdmin, target, impAdmin := addrs[0], addrs[1], addrs[2], addrs[3]
	v := &vatcarPair{target: target}
	expArgs := append([]string{"run",
		"--listen", "tcp:" + listen,
		"--secret-key-file", filepath.Join(dir, "export.pem"),
		"--export", "bench=" + backendAddr,
		"--cap-dir", capDir,
		"--admin-listen", expAdmin,
	}, extra...)
	p, err := startProcess("vatcar export", bin, expArgs, filepath.Join(dir, "export.log"))
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
	}, extra...)
	p, err = startProcess("vatcar import", bin, impArgs, filepath.Join(dir, "import.log"))
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
		{Name: "vatcar import", PIDs: []int{v.imp.PID()}, Admin: impAdmin},
		{Name: "vatcar export", PIDs: []int{v.exp.PID()}, Admin: expAdmin},
	}
	return v, nil
}
