//go:build !nok8s

// The `vatcar inject` commands that use the Kubernetes packages (k8s.io/...,
// through package k8s): -f, serve and selftest. The sidecar image's build
// (-tags nok8s) leaves them out; see injectcmd.go.

package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/vatcar/vatcar/internal/probe"
	"github.com/vatcar/vatcar/k8s"
)

const injectUsage = `usage:
  vatcar inject [flags] -f FILE|-     print the manifests with the sidecar added
  vatcar inject serve [flags]         run the mutating admission webhook (HTTPS)
  vatcar inject probe [flags] URL     GET URL, exit 0 on 2xx (a regular sidecar's start-up gate)
  vatcar inject selftest [flags]      in a pod: dry-run create a pod, check it is injected (helm test)
`

// runInjectFile is `vatcar inject -f FILE`: the manifests with the sidecar
// added, on stdout, and the injector's warnings on stderr.
func runInjectFile(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("inject", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, injectUsage+"\nflags:\n"); fs.PrintDefaults() }
	file := fs.String("f", "", "manifest file to inject, `FILE` or - for standard input")
	cfgFlags := addInjectorFlags(fs)
	if err := fs.Parse(args); err != nil {
		return usageErr(err)
	}
	if *file == "" || fs.NArg() > 0 {
		fs.Usage()
		return fmt.Errorf("%w: inject needs -f FILE or -f - and no other arguments", errUsage)
	}
	inj, err := cfgFlags.injector()
	if err != nil {
		return err
	}
	data, err := readManifestArg(*file, stdin)
	if err != nil {
		return fmt.Errorf("inject: %w", err)
	}
	warnings, err := k8s.InjectManifests(inj, bytes.NewReader(data), stdout)
	for _, w := range warnings {
		fmt.Fprintln(stderr, "warning:", w)
	}
	if err != nil {
		return fmt.Errorf("inject %s: %w", *file, err)
	}
	// What `vatcar check` finds besides the injector's own warnings (the key
	// Secret, the Service, the imports' Secrets), as notes: the manifests
	// were written all the same.
	findings, err := inj.Check(bytes.NewReader(data), k8s.CheckConfig{SkipInjectorWarnings: true, Force: true})
	if err != nil {
		return fmt.Errorf("inject %s: %w", *file, err)
	}
	for _, f := range findings {
		fmt.Fprintln(stderr, f)
	}
	return nil
}

// injectorFlags are the flags that build the injector's Config.
type injectorFlags struct {
	config, kubeVersion, image *string
}

func addInjectorFlags(fs *flag.FlagSet) injectorFlags {
	return injectorFlags{
		config:      fs.String("config", "", "injector config `FILE` (YAML); flags override it"),
		kubeVersion: fs.String("kube-version", "", "cluster `VERSION` (MAJOR.MINOR); below 1.29 the sidecar is a regular container"),
		image:       fs.String("image", "", "sidecar `IMAGE` (default "+k8s.DefaultImage()+", the tag of this build's version)"),
	}
}

func (f injectorFlags) injector() (*k8s.Injector, error) {
	var cfg k8s.Config
	if *f.config != "" {
		var err error
		if cfg, err = k8s.LoadConfig(*f.config); err != nil {
			return nil, fmt.Errorf("%w: %w", errUsage, err)
		}
	}
	if *f.kubeVersion != "" {
		cfg.KubeVersion = *f.kubeVersion
	}
	if *f.image != "" {
		cfg.Image = *f.image
	}
	inj, err := k8s.NewInjector(cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errUsage, err)
	}
	return inj, nil
}

func runInjectServe(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("inject serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", ":8443", "HTTPS listen `ADDR`")
	cert := fs.String("tls-cert", "", "TLS certificate chain `FILE` (PEM), reloaded when it changes")
	key := fs.String("tls-key", "", "TLS key `FILE` (PEM), reloaded when it changes")
	reload := fs.Duration("cert-reload-interval", 10*time.Second, "how often to check the TLS files for changes")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	cfgFlags := addInjectorFlags(fs)
	if err := fs.Parse(args); err != nil {
		return usageErr(err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: inject serve takes no arguments", errUsage)
	}
	var log *slog.Logger
	switch *logFormat {
	case "text":
		log = slog.New(slog.NewTextHandler(stderr, nil))
	case "json":
		log = slog.New(slog.NewJSONHandler(stderr, nil))
	default:
		return fmt.Errorf("%w: --log-format %q: want text or json", errUsage, *logFormat)
	}
	inj, err := cfgFlags.injector()
	if err != nil {
		return err
	}
	srv, err := k8s.NewServer(k8s.NewHandler(inj, log), k8s.ServerConfig{
		CertFile: *cert, KeyFile: *key, ReloadInterval: *reload, Logger: log,
	})
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("inject serve: %w", err)
	}
	return srv.Serve(ctx, ln)
}

func runInjectSelfTest(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("inject selftest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg k8s.SelfTestConfig
	fs.StringVar(&cfg.Namespace, "namespace", "", "`NAMESPACE` of the dry-run pod (default: the pod's own)")
	fs.StringVar(&cfg.Image, "image", "", "`IMAGE` of the dry-run pod (never pulled)")
	healthz := fs.String("webhook-url", "", "also GET this webhook `URL` (e.g. https://SERVICE.NS.svc/healthz) first")
	caFile := fs.String("webhook-ca-file", "", "PEM CA `FILE` for --webhook-url")
	if err := fs.Parse(args); err != nil {
		return usageErr(err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: inject selftest takes no arguments", errUsage)
	}
	if *healthz != "" {
		if err := probe.Get(ctx, *healthz, probe.Config{CAFile: *caFile, Wait: time.Minute}); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "webhook healthy:", *healthz)
	}
	if err := k8s.SelfTest(ctx, cfg); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "a pod that opts in gets the vatcar sidecar")
	return nil
}
