package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/vatcar/vatcar/sidecar"
)

// runRun is `vatcar run`: the sidecar. It runs until ctx ends (SIGTERM or
// SIGINT), then drains and returns nil. SIGHUP re-reads the config file
// (with the same flags on top) and reloads exports, imports and routes, and
// re-reads the revocation list (even when the config file is bad).
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
	sidecar.TuneRuntime(cfg)
	if err := s.Start(); err != nil {
		return err
	}
	for {
		select {
		case <-hup:
			next, err := sidecar.ParseFlags(args, io.Discard)
			if err == nil {
				err = s.Reload(next) // rereads the revocation list too
			} else {
				s.RereadRevocations()
				err = fmt.Errorf("reload refused, nothing changed: %w", err)
			}
			if err != nil {
				log.Error("reload failed", "err", err) // the error says whether anything changed
			}
		case <-ctx.Done():
			// A drain cut short by --drain-timeout is logged, not an error:
			// the process was asked to stop and it did.
			_ = s.Shutdown(context.Background())
			return nil
		}
	}
}
