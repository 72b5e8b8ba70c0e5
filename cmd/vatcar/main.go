// Command vatcar is the vatcar sidecar: gRPC in, CapTP across, gRPC out.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/vatcar/vatcar/internal/buildinfo"
	"github.com/vatcar/vatcar/sidecar"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "vatcar:", err)
		os.Exit(exitCode(err))
	}
}

// exitCode is 2 for usage and configuration errors, 1 for the rest.
func exitCode(err error) int {
	if errors.Is(err, errUsage) || errors.Is(err, sidecar.ErrConfig) {
		return 2
	}
	return 1
}

const usage = `usage: vatcar <command> [flags]

commands:
  run      run the sidecar (vatcar run --help lists its flags)
  demo     run the whole path on one machine, then exit
  keygen   create a vat key file and print its digest
  uri      print the sturdy URI of an export
  ref      narrow a sturdy ref offline, or inspect one
  ctl      talk to a running sidecar's admin API
  inject   run the Kubernetes sidecar injector webhook
  check    check Kubernetes manifests for what the sidecar needs (offline)
  version  print vatcar's version, VCS revision and Go version (also --version)
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("%w: no command", errUsage)
	}
	switch args[0] {
	case "run":
		return runRun(ctx, args[1:], stdout, stderr)
	case "demo":
		return runDemo(ctx, args[1:], stdout, stderr)
	case "keygen":
		return runKeygen(ctx, args[1:], stdout, stderr)
	case "uri":
		return runURI(ctx, args[1:], stdout, stderr)
	case "ref":
		return runRef(ctx, args[1:], stdout, stderr)
	case "ctl":
		return runCtl(ctx, args[1:], stdout, stderr)
	case "inject":
		return runInject(ctx, args[1:], os.Stdin, stdout, stderr)
	case "check":
		return runCheck(args[1:], os.Stdin, stdout, stderr)
	case "version", "--version", "-version":
		return runVersion(args[1:], stdout)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("%w: unknown command %q", errUsage, args[0])
	}
}

// runVersion is `vatcar version` (and `vatcar --version`): one line with the
// module version, the VCS revision and the Go version, from the build info.
func runVersion(args []string, stdout io.Writer) error {
	if len(args) > 0 {
		return fmt.Errorf("%w: version takes no arguments", errUsage)
	}
	_, err := fmt.Fprintln(stdout, buildinfo.Read())
	return err
}
