package probe

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

// ErrFailed reports a probe that did not get a 2xx answer.
var ErrFailed = errors.New("probe failed")

// Config configures Get. The zero value makes one plain attempt with a 2 s
// timeout.
type Config struct {
	// Timeout bounds each attempt. Zero: 2 s.
	Timeout time.Duration
	// Wait, when positive, retries failed attempts until one succeeds or
	// Wait has passed (start-up gating). Zero: one attempt.
	Wait time.Duration
	// Interval is the pause between retries. Zero: 250 ms.
	Interval time.Duration
	// CAFile, when set, is the PEM CA bundle that https URLs must chain to.
	// Empty: the system roots.
	CAFile string
}

// Get GETs url and succeeds on a 2xx answer; a failure to get one wraps
// ErrFailed (a bad CA file does not).
func Get(ctx context.Context, url string, cfg Config) error {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 250 * time.Millisecond
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil // the admin API is local; a pod's HTTP_PROXY must not catch it
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return fmt.Errorf("probe %s: %w", url, err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return fmt.Errorf("probe %s: no certificate in %s", url, cfg.CAFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: cfg.Timeout}
	if cfg.Wait > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Wait)
		defer cancel()
	}
	for {
		err := probeOnce(ctx, client, url)
		if err == nil || cfg.Wait <= 0 {
			return err
		}
		t := time.NewTimer(cfg.Interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w after waiting %s: %w", err, cfg.Wait, ctx.Err())
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
		return fmt.Errorf("%w: %s: %w", ErrFailed, url, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("%w: %s: %s", ErrFailed, url, resp.Status)
	}
	return nil
}
