package k8s

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// ServerConfig configures Server. Its zero value is not usable: CertFile and
// KeyFile are required.
type ServerConfig struct {
	// CertFile and KeyFile are the PEM certificate chain and key served.
	CertFile, KeyFile string
	// ReloadInterval is how often the files are checked for changes. Zero:
	// 10 s.
	ReloadInterval time.Duration
	// ShutdownTimeout bounds how long Serve waits for requests in flight
	// once its context ends. Zero: 10 s.
	ShutdownTimeout time.Duration
	// Logger receives the server's logs. Nil: discarded.
	Logger *slog.Logger
}

// Validate reports a missing certificate or key path or a negative duration.
func (c ServerConfig) Validate() error {
	if c.CertFile == "" || c.KeyFile == "" {
		return fmt.Errorf("%w: the webhook needs a TLS certificate and key file", ErrInvalidConfig)
	}
	if c.ReloadInterval < 0 || c.ShutdownTimeout < 0 {
		return fmt.Errorf("%w: negative duration", ErrInvalidConfig)
	}
	return nil
}

// Server serves a Handler over HTTPS with a certificate reloaded from its
// files. Each Serve call owns its listener; a Server may serve several.
type Server struct {
	cfg     ServerConfig
	handler http.Handler
	certs   *CertReloader
	log     *slog.Logger
}

// NewServer loads the certificate once (failing if it cannot) and returns a
// Server for h.
func NewServer(h http.Handler, cfg ServerConfig) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	certs, err := NewCertReloader(cfg.CertFile, cfg.KeyFile, log)
	if err != nil {
		return nil, err
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = 10 * time.Second
	}
	return &Server{cfg: cfg, handler: h, certs: certs, log: log}, nil
}

// Certs returns the server's certificate source (for tests and reloads on
// demand).
func (s *Server) Certs() *CertReloader { return s.certs }

// Serve accepts TLS connections on ln until ctx ends, then shuts down
// gracefully and returns nil; it closes ln. Other errors are returned as they
// happen.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler: s.handler,
		TLSConfig: &tls.Config{
			MinVersion:     tls.VersionTLS12,
			GetCertificate: s.certs.GetCertificate,
		},
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { s.certs.Watch(watchCtx, s.cfg.ReloadInterval) })
	wg.Go(func() {
		<-watchCtx.Done()
		shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(shutCtx); err != nil {
			s.log.Warn("webhook shutdown", "err", err)
			_ = srv.Close()
		}
	})
	s.log.Info("webhook listening", "addr", ln.Addr().String())
	err := srv.ServeTLS(ln, "", "")
	stopWatch()
	wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("serve webhook: %w", err)
}
