package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/vatcar/vatcar/sidecar"
	"github.com/vatcar/vatcar/vat"
)

// runDemo is `vatcar demo`: in one process, a gRPC service (the standard
// health service) behind vat A and a client behind vat B, TLS on. A exports
// the service and writes its cap file; B imports the cap file and exposes it
// on a local port; the client makes a unary call (Check) and a server
// streaming call (Watch) through the path and prints the results.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("vatcar demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	verbose := fs.Bool("v", false, "show the sidecars' logs")
	if err := fs.Parse(args); err != nil {
		return usageErr(err) // -h, --help: the usage, exit 0
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	logs := io.Discard
	if *verbose {
		logs = stderr
	}
	dir, err := os.MkdirTemp("", "vatcar-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	// The app behind vat A: a plain gRPC server.
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	app := grpc.NewServer()
	healthSrv := health.NewServer()
	healthSrv.SetServingStatus("demo.Greeter", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(app, healthSrv)
	go app.Serve(appLn)
	defer app.Stop()
	fmt.Fprintf(stdout, "app server (gRPC health service) on %s\n", appLn.Addr())

	// Vat A exports it.
	capDir := filepath.Join(dir, "caps")
	if err := os.Mkdir(capDir, 0o700); err != nil {
		return err
	}
	a, err := startDemoSidecar(sidecar.Config{
		Listen:        "tcp:127.0.0.1:0",
		SecretKeyFile: filepath.Join(dir, "a.pem"),
		Exports:       []sidecar.Export{{Name: "health", Target: appLn.Addr().String()}},
		CapDir:        capDir,
		AdminListen:   sidecar.AdminListenOff,
		HealthListen:  sidecar.AdminListenOff,
	}, logs)
	if err != nil {
		return fmt.Errorf("demo: sidecar A: %w", err)
	}
	defer a.Close()
	capFile := filepath.Join(capDir, "health.cap")
	uri, err := vat.LoadCapFile(capFile)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	fmt.Fprintf(stdout, "vat A %s exports it as\n  %s\n  (cap file %s)\n", a.Digest(), uri, capFile)

	// Vat B imports the cap file and serves it on a local port.
	b, err := startDemoSidecar(sidecar.Config{
		Imports:      []sidecar.Import{{Name: "health", URI: "@" + capFile}},
		AdminListen:  sidecar.AdminListenOff,
		HealthListen: sidecar.AdminListenOff,
	}, logs)
	if err != nil {
		return fmt.Errorf("demo: sidecar B: %w", err)
	}
	defer b.Close()
	local := b.Addresses().Imports["health"]
	fmt.Fprintf(stdout, "vat B %s imports it on %s\n", b.Digest(), local)

	// The client behind vat B: plain gRPC to the local port.
	cc, err := grpc.NewClient(local, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	client := healthpb.NewHealthClient(cc)

	resp, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: "demo.Greeter"})
	if err != nil {
		return fmt.Errorf("demo: unary Check through the vats: %w", err)
	}
	fmt.Fprintf(stdout, "unary     Check(demo.Greeter) -> %s\n", resp.GetStatus())

	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	stream, err := client.Watch(watchCtx, &healthpb.HealthCheckRequest{Service: "demo.Greeter"})
	if err != nil {
		return fmt.Errorf("demo: streaming Watch: %w", err)
	}
	for i, next := range []healthpb.HealthCheckResponse_ServingStatus{healthpb.HealthCheckResponse_NOT_SERVING, -1} {
		update, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("demo: streaming Watch, update %d: %w", i+1, err)
		}
		fmt.Fprintf(stdout, "streaming Watch(demo.Greeter) update %d -> %s\n", i+1, update.GetStatus())
		if next >= 0 {
			healthSrv.SetServingStatus("demo.Greeter", next)
		}
	}
	stopWatch()
	fmt.Fprintln(stdout, "ok: gRPC -> vat B -> CapTP over TLS -> vat A -> gRPC and back")
	return nil
}

// startDemoSidecar makes and starts a sidecar for the demo.
func startDemoSidecar(cfg sidecar.Config, logs io.Writer) (*sidecar.Sidecar, error) {
	s, err := sidecar.New(cfg, sidecar.NewLogger(cfg, logs))
	if err != nil {
		return nil, err
	}
	if err := s.Start(); err != nil {
		return nil, err
	}
	return s, nil
}
