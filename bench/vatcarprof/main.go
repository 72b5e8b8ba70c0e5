// Command vatcarprof is `vatcar run` with net/http/pprof on the side, for the bench
// harness's --pprof-dir: the same sidecar.ParseFlags, New, Start and Shutdown as
// cmd/vatcar, plus a profiling HTTP listener on $VATCAR_PPROF_LISTEN, with block and
// mutex profiling turned on when $VATCAR_PPROF_BLOCK is set. Its arguments are those of
// `vatcar run`.
//
// It exists because the sidecar's admin listener serves no /debug/pprof; it does not
// reload on SIGHUP and is not meant for anything but profiling.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/vatcar/vatcar/sidecar"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "vatcarprof:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) > 0 && args[0] == "run" {
		args = args[1:]
	}
	cfg, err := sidecar.ParseFlags(args, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	if addr := os.Getenv("VATCAR_PPROF_LISTEN"); addr != "" {
		if os.Getenv("VATCAR_PPROF_BLOCK") != "" {
			// Recording blocking events unwinds stacks: it costs CPU and skews a
			// CPU profile taken at the same time.
			runtime.SetBlockProfileRate(10_000) // one sample per 10 µs blocked
			runtime.SetMutexProfileFraction(100)
		}
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("pprof listen: %w", err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		srv := &http.Server{Handler: mux}
		go func() { _ = srv.Serve(lis) }()
		defer srv.Close()
	}
	sidecar.TuneRuntime(cfg) // as `vatcar run` does: profile what ships
	log := sidecar.NewLogger(cfg, os.Stderr)
	s, err := sidecar.New(cfg, log)
	if err != nil {
		return err
	}
	if err := s.Start(); err != nil {
		return err
	}
	<-ctx.Done()
	return s.Shutdown(context.Background())
}
