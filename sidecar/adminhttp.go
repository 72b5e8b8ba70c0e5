package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
)

// adminHandler serves the admin listener: gRPC (HTTP/2 with an
// application/grpc content type) goes to the admin gRPC server, the rest to
// /healthz (alive), /readyz (ready() is true) and /metrics (reg).
func adminHandler(g *grpc.Server, reg *prometheus.Registry, ready func() bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			g.ServeHTTP(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// adminListener is the running admin listener: one port speaking HTTP/1.1 and
// HTTP/2 without TLS (h2c, prior knowledge, which gRPC clients use).
type adminListener struct {
	http *http.Server
	grpc *grpc.Server
	addr net.Addr
	done chan struct{}
}

// startAdmin listens on addr and serves h until shut down.
func startAdmin(addr string, g *grpc.Server, h http.Handler, log *slog.Logger) (*adminListener, error) {
	log = orDiscard(log)
	ln, err := net.Listen("tcp", loopbackIfNoHost(addr))
	if err != nil {
		return nil, fmt.Errorf("admin listen %s: %w", addr, err)
	}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           h,
		Protocols:         &protocols,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	a := &adminListener{http: srv, grpc: g, addr: ln.Addr(), done: make(chan struct{})}
	go func() {
		defer close(a.done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin listener failed", "err", err)
		}
	}()
	return a, nil
}

// close stops the admin listener, letting running requests finish until ctx
// ends.
func (a *adminListener) close(ctx context.Context) {
	if err := a.http.Shutdown(ctx); err != nil {
		_ = a.http.Close()
	}
	a.grpc.Stop()
	<-a.done
}
