package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// findDebianBinary returns the binary of the peer proxy name (nginx, haproxy; the
// Debian package has the same name): bin when set, else name from PATH or /usr/sbin.
// When it is missing and install is true, it installs Debian's package with apt-get,
// which needs root. A failure wraps errSkipped with the reason.
func findDebianBinary(ctx context.Context, name, bin string, install bool, log func(string, ...any)) (string, error) {
	if bin != "" {
		return bin, nil
	}
	look := func() (string, bool) {
		if p, err := exec.LookPath(name); err == nil {
			return p, true
		}
		if p := filepath.Join("/usr/sbin", name); fileExists(p) {
			return p, true
		}
		return "", false
	}
	if p, ok := look(); ok {
		return p, nil
	}
	if !install {
		return "", fmt.Errorf("%w: %s not found and not to be installed (--no-install)", errSkipped, name)
	}
	if os.Geteuid() != 0 {
		return "", fmt.Errorf("%w: %s not found and not root to apt-get install it", errSkipped, name)
	}
	log("%s not found: installing Debian's %s with apt-get", name, name)
	aptInstall := func() error {
		cmd := exec.CommandContext(ctx, "apt-get", "install", "-y", "-q", name)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("apt-get install %s: %w: %s", name, err, lastLines(string(out), 3))
		}
		return nil
	}
	if err := aptInstall(); err != nil {
		// The package lists may be missing or stale: refresh them once.
		if out, uerr := exec.CommandContext(ctx, "apt-get", "update", "-q").CombinedOutput(); uerr != nil {
			return "", fmt.Errorf("%w: %v; apt-get update: %v: %s", errSkipped, err, uerr, lastLines(string(out), 3))
		}
		if err := aptInstall(); err != nil {
			return "", fmt.Errorf("%w: %v", errSkipped, err)
		}
	}
	if p, ok := look(); ok {
		return p, nil
	}
	return "", fmt.Errorf("%w: %s still not found after apt-get install", errSkipped, name)
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// lastLines returns the last n non-empty lines of s, joined by " | ".
func lastLines(s string, n int) string {
	t := &tailWriter{max: len(s) + 1}
	_, _ = t.Write([]byte(s))
	return t.LastLines(n)
}
