//go:build !nok8s

package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/vatcar/vatcar/k8s"
)

const checkUsage = `usage: vatcar check [flags] -f FILE|-

An offline preflight of Kubernetes manifests (the files about to be applied,
or what kubectl get -o yaml prints): for every workload that opts in to the
sidecar, its annotations, its vat key Secret, the Service its sturdy URIs
name (selecting its pods, exposing the CapTP port, headless), the Secrets
its imports read. Prints one finding per line; exit status 1 if any is an
error, 0 if there are only warnings.
`

// runCheck is `vatcar check -f FILE|-`: a thin adapter over Injector.Check.
func runCheck(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, checkUsage+"\nflags:\n"); fs.PrintDefaults() }
	file := fs.String("f", "", "manifest `FILE` to check, or - for standard input")
	cfgFlags := addInjectorFlags(fs)
	if err := fs.Parse(args); err != nil {
		return usageErr(err)
	}
	if *file == "" || fs.NArg() > 0 {
		fs.Usage()
		return fmt.Errorf("%w: check needs -f FILE or -f - and no other arguments", errUsage)
	}
	inj, err := cfgFlags.injector()
	if err != nil {
		return err
	}
	data, err := readManifestArg(*file, stdin)
	if err != nil {
		return fmt.Errorf("check: %w", err)
	}
	findings, err := inj.Check(bytes.NewReader(data), k8s.CheckConfig{})
	if err != nil {
		return fmt.Errorf("check %s: %w", *file, err)
	}
	errs := 0
	for _, f := range findings {
		fmt.Fprintln(stdout, f)
		if f.Severity == k8s.SeverityError {
			errs++
		}
	}
	if errs > 0 {
		return fmt.Errorf("check %s: %d errors, %d warnings", *file, errs, len(findings)-errs)
	}
	if len(findings) == 0 {
		fmt.Fprintln(stderr, "check: no problems found")
	} else {
		fmt.Fprintf(stderr, "check: %d warnings, no errors\n", len(findings))
	}
	return nil
}

// readManifestArg reads -f's file, or stdin for "-".
func readManifestArg(file string, stdin io.Reader) ([]byte, error) {
	if file == "-" {
		return io.ReadAll(stdin)
	}
	return os.ReadFile(file)
}
