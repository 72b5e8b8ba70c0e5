package k8s

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"
)

// CertReloader serves a TLS certificate from a pair of PEM files and picks up
// new contents when the files change (as a mounted Secret's do). A reload
// that fails keeps the previous certificate. It is safe for concurrent use:
// the current certificate sits behind an atomic pointer.
type CertReloader struct {
	certFile, keyFile string
	log               *slog.Logger
	cur               atomic.Pointer[loadedCert]
}

type loadedCert struct {
	cert *tls.Certificate
	sum  [sha256.Size]byte // of both files' bytes, to notice changes
}

// NewCertReloader loads the pair once and fails if it cannot. A nil logger
// discards.
func NewCertReloader(certFile, keyFile string, logger *slog.Logger) (*CertReloader, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	c := &CertReloader{certFile: certFile, keyFile: keyFile, log: logger}
	if _, err := c.Reload(); err != nil {
		return nil, err
	}
	return c, nil
}

// Reload reads the files again and swaps the certificate in when their
// contents changed and parse. It reports whether the certificate changed.
func (c *CertReloader) Reload() (bool, error) {
	certPEM, err := os.ReadFile(c.certFile)
	if err != nil {
		return false, fmt.Errorf("load TLS certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(c.keyFile)
	if err != nil {
		return false, fmt.Errorf("load TLS key: %w", err)
	}
	sum := sha256.Sum256(append(append(bytes.Clone(certPEM), 0), keyPEM...))
	if old := c.cur.Load(); old != nil && old.sum == sum {
		return false, nil
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return false, fmt.Errorf("load TLS pair %s, %s: %w", c.certFile, c.keyFile, err)
	}
	c.cur.Store(&loadedCert{cert: &cert, sum: sum})
	return true, nil
}

// GetCertificate returns the current certificate; it fits
// tls.Config.GetCertificate.
func (c *CertReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return c.cur.Load().cert, nil
}

// Watch calls Reload every interval until ctx ends, logging changes and
// failures. Zero interval: 10 s.
func (c *CertReloader) Watch(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = 10 * time.Second
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		changed, err := c.Reload()
		switch {
		case err != nil:
			c.log.Error("TLS certificate reload failed; keeping the previous one", "err", err)
		case changed:
			c.log.Info("TLS certificate reloaded", "cert", c.certFile)
		}
	}
}
