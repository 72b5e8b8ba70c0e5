package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"

	"github.com/vatcar/vatcar/sidecar"
)

// runRun is `vatcar run`: the sidecar. It runs until ctx ends (SIGTERM or
// SIGINT), then drains and returns nil. SIGHUP re-reads the config file
// (with the same flags on top) and reloads exports, imports and routes.
func runRun(ctx context.Context, args []string, _, stderr io.Writer) error {
	cfg, err := sidecar.ParseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	log := sidecar.NewLogger(cfg, stderr)
	s, err := sidecar.New(cfg, log)
	if err != nil {
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	tuneRuntime(cfg)
	if err := s.Start(); err != nil {
		return err
	}
	for {
		select {
		case <-hup:
			next, err := sidecar.ParseFlags(args, io.Discard)
			if err == nil {
				err = s.Reload(next)
			}
			if err != nil {
				log.Error("reload failed; the running configuration stays", "err", err)
			}
		case <-ctx.Done():
			// A drain cut short by --drain-timeout is logged, not an error:
			// the process was asked to stop and it did.
			_ = s.Shutdown(context.Background())
			return nil
		}
	}
}

// Runtime defaults of `vatcar run`, used only when the environment does not
// set GOGC or GOMEMLIMIT: the garbage collector runs at half its default
// frequency (measured 9-16% less time per bridged call, docs/bench.md), and a
// soft memory limit makes it collect harder before the heap that trades for
// grows past defaultMemoryLimit.
const (
	defaultGCPercent   = 200
	defaultMemoryLimit = 512 << 20
)

// tuneRuntime applies --cpus and the runtime defaults the environment
// leaves unset.
func tuneRuntime(cfg sidecar.Config) {
	switch {
	case cfg.CPUs > 0:
		runtime.GOMAXPROCS(cfg.CPUs)
	case os.Getenv("GOMAXPROCS") == "":
		runtime.GOMAXPROCS(sidecar.DefaultCPUs)
	}
	if _, ok := os.LookupEnv("GOGC"); !ok {
		debug.SetGCPercent(defaultGCPercent)
	}
	if _, ok := os.LookupEnv("GOMEMLIMIT"); !ok {
		debug.SetMemoryLimit(defaultMemoryLimit)
	}
}
