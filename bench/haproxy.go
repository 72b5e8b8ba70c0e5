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

// The haproxy-tls path is client -> HAProxy (h2c) -> TLS 1.3 (ALPN h2) -> HAProxy ->
// backend (h2c): the second peer proxy pair a user would deploy instead of vatcar (a
// proxyPair). Each HAProxy is one process with one thread, in the foreground, without a
// master.

// findHAProxy returns the haproxy binary: bin when set, else from PATH or /usr/sbin,
// installing Debian's package when it is missing and install is true. A failure wraps
// errSkipped with the reason.
func findHAProxy(ctx context.Context, bin string, install bool, log func(string, ...any)) (string, error) {
	return findDebianBinary(ctx, "haproxy", bin, install, log)
}

// startHAProxy writes the two configurations and a fresh TLS certificate into dir,
// starts both HAProxy processes, and waits until a call goes through.
func startHAProxy(ctx context.Context, bin, dir, backendAddr string) (path, error) {
	cert, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := writeSelfSigned(cert, key); err != nil {
		return nil, err
	}
	// HAProxy takes the certificate and its key in one PEM file.
	pemPath := filepath.Join(dir, "tls.pem")
	if err := concatFiles(pemPath, 0o600, cert, key); err != nil {
		return nil, err
	}
	frontAddr, err := freePort()
	if err != nil {
		return nil, err
	}
	backAddr, err := freePort()
	if err != nil {
		return nil, err
	}
	confs := map[string]string{
		"front": haproxyConf(fmt.Sprintf(`
frontend front
	bind %s proto h2
	default_backend peer

backend peer
	server back %s ssl verify none alpn h2 ssl-min-ver TLSv1.3
`, frontAddr, backAddr)),
		"back": haproxyConf(fmt.Sprintf(`
frontend back
	bind %s ssl crt %s alpn h2 ssl-min-ver TLSv1.3
	default_backend app

backend app
	server app %s proto h2
`, backAddr, pemPath, backendAddr)),
	}
	h := &proxyPair{name: pathHAProxy, target: frontAddr}
	for _, name := range []string{"back", "front"} {
		conf := filepath.Join(dir, name+".cfg")
		if err := os.WriteFile(conf, []byte(confs[name]), 0o644); err != nil {
			return nil, fmt.Errorf("write haproxy config: %w", err)
		}
		// -db: in the foreground, no master: one process whose CPU and memory are the
		// instance's.
		p, err := startProcess("haproxy "+name, bin, []string{"-db", "-f", conf}, nil,
			filepath.Join(dir, name+".log"))
		if err != nil {
			h.Close()
			return nil, err
		}
		if name == "front" {
			h.front = p
		} else {
			h.back = p
		}
	}
	if err := waitReady(ctx, frontAddr, 30*time.Second, h.front, h.back); err != nil {
		h.Close()
		return nil, fmt.Errorf("haproxy pair: %w", err)
	}
	h.instances = []instance{
		{Name: "haproxy front", PIDs: withChildren([]int{h.front.PID()})},
		{Name: "haproxy back", PIDs: withChildren([]int{h.back.PID()})},
	}
	return h, nil
}

// haproxyConf is a whole HAProxy configuration: one thread, HTTP mode (HTTP/2 end to
// end, as gRPC needs), keep-alive on both sides with idle server connections reused by
// every request (http-reuse always), timeouts long enough for the longest stream, only
// failed requests logged (to stderr, the instance's log file: --keep keeps it), and the
// given proxies.
func haproxyConf(proxies string) string {
	return `# Written by vatcar's bench harness.
global
	nbthread 1
	maxconn 4096
	tune.h2.max-concurrent-streams 1024
	log stderr format short local0

defaults
	mode http
	log global
	option httplog
	option dontlog-normal
	option http-keep-alive
	http-reuse always
	timeout connect 5s
	timeout client 300s
	timeout server 300s
	timeout http-request 300s
	timeout http-keep-alive 300s
` + proxies
}

// concatFiles writes the contents of srcs, one after another, into dst with mode perm.
func concatFiles(dst string, perm os.FileMode, srcs ...string) error {
	var all []byte
	for _, s := range srcs {
		b, err := os.ReadFile(s)
		if err != nil {
			return fmt.Errorf("read %s: %w", s, err)
		}
		all = append(all, b...)
	}
	if err := os.WriteFile(dst, all, perm); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	return nil
}

// haproxyVersion is the first line of haproxy -v, for the report.
func haproxyVersion(bin string) string {
	out, err := exec.Command(bin, "-v").CombinedOutput()
	if err != nil {
		return "HAProxy (version unknown)"
	}
	first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	// "HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/"
	if f := strings.Fields(first); len(f) >= 3 && f[0] == "HAProxy" && f[1] == "version" {
		return "HAProxy " + f[2]
	}
	return first
}
