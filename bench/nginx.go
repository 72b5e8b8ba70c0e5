package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// proxyPair is a front and a back proxy process with TLS 1.3 between them, h2c on both
// ends: a peer proxy pair a user would deploy instead of vatcar (nginx-tls,
// haproxy-tls), or the grpc-go reference pair (grpcgo-tls); or a lone front proxy with
// no back, h2c both sides (grpcgo-h2c).
type proxyPair struct {
	name        string // pathNginx, pathHAProxy, pathGrpcgo or pathGrpcgoH2C
	target      string
	hop         string // the back process's TLS address, when known (grpcgo-tls)
	front, back *process
	instances   []instance
}

func (p *proxyPair) Name() string          { return p.name }
func (p *proxyPair) Target() string        { return p.target }
func (p *proxyPair) Instances() []instance { return p.instances }

func (p *proxyPair) Exited() error { return firstExited(p.front, p.back) }

func (p *proxyPair) Close() {
	for _, proc := range []*process{p.front, p.back} {
		if proc != nil {
			proc.Stop()
		}
	}
}

// findNginx returns the nginx binary: bin when set, else from PATH or /usr/sbin,
// installing Debian's package when it is missing and install is true. A failure wraps
// errSkipped with the reason.
func findNginx(ctx context.Context, bin string, install bool, log func(string, ...any)) (string, error) {
	return findDebianBinary(ctx, "nginx", bin, install, log)
}

// startNginx writes the two configurations and a fresh TLS certificate into dir, starts
// both nginx processes, and waits until a call goes through.
func startNginx(ctx context.Context, bin, dir, backendAddr string) (path, error) {
	// The workers run unprivileged: they need to reach the temp directories.
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o777); err != nil {
		return nil, fmt.Errorf("nginx dirs: %w", err)
	}
	for _, d := range []string{dir, filepath.Join(dir, "tmp")} {
		if err := os.Chmod(d, 0o777); err != nil {
			return nil, fmt.Errorf("nginx dirs: %w", err)
		}
	}
	cert, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := writeSelfSigned(cert, key); err != nil {
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
		"front": nginxConf(dir, "front", fmt.Sprintf(`
	upstream peer {
		server %s;
		keepalive 256;
		keepalive_requests 1000000;
		keepalive_timeout 300s;
	}
	server {
		listen %s http2;
		location / {
			grpc_pass grpcs://peer;
			grpc_ssl_protocols TLSv1.3;
			grpc_ssl_session_reuse on;
		}
	}`, backAddr, frontAddr)),
		"back": nginxConf(dir, "back", fmt.Sprintf(`
	upstream app {
		server %s;
		keepalive 256;
		keepalive_requests 1000000;
		keepalive_timeout 300s;
	}
	server {
		listen %s ssl http2;
		ssl_certificate %s;
		ssl_certificate_key %s;
		ssl_protocols TLSv1.3;
		location / {
			grpc_pass grpc://app;
		}
	}`, backendAddr, backAddr, cert, key)),
	}
	n := &proxyPair{name: pathNginx, target: frontAddr}
	for _, name := range []string{"back", "front"} {
		conf := filepath.Join(dir, name+".conf")
		if err := os.WriteFile(conf, []byte(confs[name]), 0o644); err != nil {
			return nil, fmt.Errorf("write nginx config: %w", err)
		}
		p, err := startProcess("nginx "+name, bin,
			[]string{"-p", dir, "-c", conf, "-e", filepath.Join(dir, name+"-error.log")}, nil,
			filepath.Join(dir, name+".log"))
		if err != nil {
			n.Close()
			return nil, err
		}
		if name == "front" {
			n.front = p
		} else {
			n.back = p
		}
	}
	if err := waitReady(ctx, frontAddr, 30*time.Second, n.front, n.back); err != nil {
		n.Close()
		return nil, fmt.Errorf("nginx pair: %w", err)
	}
	// The workers exist now: count them with their masters.
	n.instances = []instance{
		{Name: "nginx front", PIDs: withChildren([]int{n.front.PID()})},
		{Name: "nginx back", PIDs: withChildren([]int{n.back.PID()})},
	}
	for _, in := range n.instances {
		if len(in.PIDs) < 2 {
			n.Close()
			return nil, errors.New("nginx pair: a master has no worker process")
		}
	}
	return n, nil
}

// nginxConf is a whole nginx configuration: one worker, in the foreground, logs and
// temp files under dir, HTTP/2 with keepalive_requests 1000000, and the given servers.
func nginxConf(dir, name, servers string) string {
	tmp := filepath.Join(dir, "tmp", name)
	return fmt.Sprintf(`# Written by vatcar's bench harness.
daemon off;
master_process on;
worker_processes 1;
pid %[1]s/%[2]s.pid;
error_log %[1]s/%[2]s-error.log warn;
events {
	worker_connections 16384;
}
http {
	access_log off;
	client_body_temp_path %[3]s-body;
	proxy_temp_path %[3]s-proxy;
	fastcgi_temp_path %[3]s-fastcgi;
	uwsgi_temp_path %[3]s-uwsgi;
	scgi_temp_path %[3]s-scgi;
	client_max_body_size 0;
	keepalive_requests 1000000;
	keepalive_timeout 300s;
	http2_max_concurrent_streams 1024;
	grpc_read_timeout 300s;
	grpc_send_timeout 300s;
%[4]s
}
`, dir, name, tmp, servers)
}

// nginxVersion is the output of nginx -v, for the report.
func nginxVersion(bin string) string {
	out, err := exec.Command(bin, "-v").CombinedOutput()
	if err != nil {
		return "nginx (version unknown)"
	}
	return strings.TrimSpace(strings.TrimPrefix(string(out), "nginx version: "))
}
