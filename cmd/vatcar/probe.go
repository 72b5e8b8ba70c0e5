package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/vatcar/vatcar/internal/probe"
)

// runInjectProbe is `vatcar inject probe URL`: the start-up gate of a
// regular (pre-1.29) injected sidecar, its postStart hook (k8s.Injector
// writes the command line; the probes themselves are httpGet). It is in every
// build, the sidecar image's too, and uses no Kubernetes package.
func runInjectProbe(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("inject probe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg probe.Config
	fs.DurationVar(&cfg.Timeout, "timeout", 2*time.Second, "timeout of each attempt")
	fs.DurationVar(&cfg.Wait, "wait", 0, "retry until success or this long has passed (0: one attempt)")
	fs.StringVar(&cfg.CAFile, "ca-file", "", "PEM CA `FILE` for https URLs")
	if err := fs.Parse(args); err != nil {
		return usageErr(err)
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: inject probe takes one URL", errUsage)
	}
	return probe.Get(ctx, fs.Arg(0), cfg)
}
