package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

// probeConfig configures probe. The zero value makes one plain attempt with a
// 2 s timeout.
type probeConfig struct {
	// timeout bounds each attempt. Zero: 2 s.
	timeout time.Duration
	// wait, when positive, retries failed attempts until one succeeds or wait
	// has passed (start-up gating). Zero: one attempt.
	wait time.Duration
	// interval is the pause between retries. Zero: 250 ms.
	interval time.Duration
	// caFile, when set, is the PEM CA bundle that https URLs must chain to.
	// Empty: the system roots.
	caFile string
}

// runInjectProbe is `vatcar inject probe URL`: the injected sidecar's exec
// probes and start-up gate (k8s.Injector writes the command lines). They run
// inside the pod, so the admin listener can stay on loopback. It is in every
// build, the sidecar image's too, and uses no Kubernetes package.
func runInjectProbe(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("inject probe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg probeConfig
	fs.DurationVar(&cfg.timeout, "timeout", 2*time.Second, "timeout of each attempt")
	fs.DurationVar(&cfg.wait, "wait", 0, "retry until success or this long has passed (0: one attempt)")
	fs.StringVar(&cfg.caFile, "ca-file", "", "PEM CA `FILE` for https URLs")
	if err := fs.Parse(args); err != nil {
		return usageErr(err)
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: inject probe takes one URL", errUsage)
	}
	return probe(ctx, fs.Arg(0), cfg)
}

// probe GETs url and succeeds on a 2xx answer; a failure wraps errProbe.
func probe(ctx context.Context, url string, cfg probeConfig) error {
	if cfg.timeout <= 0 {
		cfg.timeout = 2 * time.Second
	}
	if cfg.interval <= 0 {
		cfg.interval = 250 * time.Millisecond
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil // the admin API is local; a pod's HTTP_PROXY must not catch it
	if cfg.caFile != "" {
		pem, err := os.ReadFile(cfg.caFile)
		if err != nil {
			return fmt.Errorf("probe %s: %w", url, err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return fmt.Errorf("probe %s: no certificate in %s", url, cfg.caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: cfg.timeout}
	if cfg.wait > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.wait)
		defer cancel()
	}
	for {
		err := probeOnce(ctx, client, url)
		if err == nil || cfg.wait <= 0 {
			return err
		}
		t := time.NewTimer(cfg.interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w after waiting %s: %w", err, cfg.wait, ctx.Err())
		case <-t.C:
		}
	}
}

func probeOnce(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("probe %s: %w", url, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", errProbe, url, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("%w: %s: %s", errProbe, url, resp.Status)
	}
	return nil
}
