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

// healthMux serves /healthz (alive), /readyz (ready() is true) and
// /metrics (reg).
func healthMux(reg *prometheus.Registry, ready func() bool) *http.ServeMux {
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
	return mux
}

// adminHandler serves one port for both: gRPC (HTTP/2 with an
// application/grpc content type) goes to the admin gRPC server g, the rest to
// health. Used when --admin-listen is a host:port that the health listener
// shares.
func adminHandler(g *grpc.Server, health http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			g.ServeHTTP(w, r)
			return
		}
		health.ServeHTTP(w, r)
	})
}

// adminListener is a running admin or health listener: an HTTP server
// speaking HTTP/1.1 and HTTP/2 without TLS (h2c, prior knowledge, which gRPC
// clients use), or the admin gRPC server alone.
type adminListener struct {
	http *http.Server // nil: grpc serves the listener itself
	grpc *grpc.Server // nil: a health listener
	addr string       // host:port, or unix:PATH
	done chan struct{}
}

// startHTTP serves h (and through it g, when not nil) on addr until shut
// down.
func startHTTP(addr string, g *grpc.Server, h http.Handler, log *slog.Logger) (*adminListener, error) {
	log = orDiscard(log)
	ln, err := listenAdmin(addr)
	if err != nil {
		return nil, err
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
	a := &adminListener{http: srv, grpc: g, addr: listenerAddr(ln), done: make(chan struct{})}
	go func() {
		defer close(a.done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("listener failed", "address", a.addr, "err", err)
		}
	}()
	return a, nil
}

// startGRPC serves the admin gRPC server g alone on addr (a Unix socket or
// host:port) until shut down.
func startGRPC(addr string, g *grpc.Server, log *slog.Logger) (*adminListener, error) {
	log = orDiscard(log)
	ln, err := listenAdmin(addr)
	if err != nil {
		return nil, err
	}
	a := &adminListener{grpc: g, addr: listenerAddr(ln), done: make(chan struct{})}
	go func() {
		defer close(a.done)
		if err := g.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			log.Error("admin listener failed", "address", a.addr, "err", err)
		}
	}()
	return a, nil
}

// listenerAddr names a bound listener as --admin-listen would: host:port, or
// unix:PATH.
func listenerAddr(ln net.Listener) string {
	if u, ok := ln.Addr().(*net.UnixAddr); ok {
		return unixPrefix + u.Name
	}
	return ln.Addr().String()
}

// close stops the listener, letting running requests finish until ctx ends.
// A Unix socket's file is removed.
func (a *adminListener) close(ctx context.Context) {
	if a.http != nil {
		if err := a.http.Shutdown(ctx); err != nil {
			_ = a.http.Close()
		}
	}
	if a.grpc != nil {
		a.grpc.Stop()
	}
	<-a.done
}
