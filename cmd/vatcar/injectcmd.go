package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
)

// `vatcar inject` is split by build tag. This file and probe.go are in every
// build: the injected regular sidecar's postStart hook runs `vatcar inject
// probe` (its probes are httpGet), so the
// sidecar image's binary (-tags nok8s, tools/build.sh --sidecar) needs them.
// The commands that use the Kubernetes packages, -f, serve and selftest, are
// in inject.go (the default build); inject_nok8s.go refuses them.

// runInject is the `vatcar inject` command: a thin adapter over package k8s.
func runInject(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "serve":
			return runInjectServe(ctx, args[1:], stderr)
		case "probe":
			return runInjectProbe(ctx, args[1:], stderr)
		case "selftest":
			return runInjectSelfTest(ctx, args[1:], stdout, stderr)
		}
	}
	return runInjectFile(args, stdin, stdout, stderr)
}

// usageErr marks a flag parsing error as a usage error; -h is not an error.
func usageErr(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return fmt.Errorf("%w: %w", errUsage, err)
}
