// Command grpcproxy is the bench harness's grpc-go reference proxy: one half of the
// grpcgo-tls path, a pair of plain grpc-go proxies joined by gRPC over TLS 1.3 with no
// Cap'n Proto in between. It measures what grpc-go itself costs a proxy pair (its
// server on the way in, its client on the way out), the floor under vatcar's own
// figures. It is a bench peer, not something to deploy.
//
// It serves every method (grpc.UnknownServiceHandler) and forwards each call as a
// full-duplex stream on one client connection to --target, message bytes untouched (a
// raw codec that keeps gRPC's buffers, no copy): request metadata (less the headers
// gRPC sets itself), deadline and cancellation (through the context) go forward;
// response headers, trailers and status come back. It has vatcar's best-case grpc-go
// settings: the sidecar's static flow-control windows on both sides, 64 stream
// workers, the bridge's buffer pool, and `vatcar run`'s runtime defaults
// (as sidecar.TuneRuntime sets them: GOMAXPROCS 1, GOGC 200, a 512 MiB soft memory
// limit, unless the environment sets them).
//
// Usage:
//
//	grpcproxy --listen HOST:PORT --target HOST:PORT [--tls-cert FILE --tls-key FILE]
//	          [--target-tls] [--admin-listen HOST:PORT [--pprof]] [--max-message-size BYTES]
//
// With --tls-cert and --tls-key it listens with TLS 1.3 only, else h2c. With
// --target-tls it dials the target with TLS 1.3 without verifying its certificate (the
// harness's self-signed one). The admin listener serves Prometheus /metrics (Go
// runtime figures) and, with --pprof, /debug/pprof.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/vatcar/vatcar/bridge"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "grpcproxy:", err)
		os.Exit(1)
	}
}

// config is the command line.
type config struct {
	listen, target  string
	tlsCert, tlsKey string
	targetTLS       bool
	admin           string
	pprof           bool
	maxMessage      int
}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("grpcproxy", flag.ContinueOnError)
	fs.StringVar(&c.listen, "listen", "", "serve gRPC on `HOST:PORT`")
	fs.StringVar(&c.target, "target", "", "forward every call to `HOST:PORT`")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "serve TLS 1.3 with this certificate `file` (with --tls-key)")
	fs.StringVar(&c.tlsKey, "tls-key", "", "the key `file` of --tls-cert")
	fs.BoolVar(&c.targetTLS, "target-tls", false, "dial the target with TLS 1.3, its certificate unverified")
	fs.StringVar(&c.admin, "admin-listen", "", "serve /metrics on `HOST:PORT`")
	fs.BoolVar(&c.pprof, "pprof", false, "serve /debug/pprof on the admin listener too")
	fs.IntVar(&c.maxMessage, "max-message-size", 8<<20, "largest message in `bytes`, either way")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	switch {
	case fs.NArg() > 0:
		return config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case c.listen == "" || c.target == "":
		return config{}, errors.New("--listen and --target are required")
	case (c.tlsCert == "") != (c.tlsKey == ""):
		return config{}, errors.New("--tls-cert and --tls-key go together")
	case c.pprof && c.admin == "":
		return config{}, errors.New("--pprof needs --admin-listen")
	case c.maxMessage <= 0:
		return config{}, fmt.Errorf("--max-message-size %d: want a positive size", c.maxMessage)
	}
	return c, nil
}

// The flow-control windows of both sides, as the sidecar's own gRPC connections have
// them (sidecar/bridge.go): static windows turn off grpc-go's bandwidth estimator and
// its PINGs.
const (
	streamWindow = 1 << 20
	connWindow   = 16 << 20
)

func run(ctx context.Context, args []string) error {
	cfg, err := parseFlags(args)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	tuneRuntime()

	creds := insecure.NewCredentials()
	if cfg.targetTLS {
		// A bench peer: the back proxy has the harness's throwaway self-signed
		// certificate, and nginx's and HAProxy's back hops are unverified too.
		creds = credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true})
	}
	cc, err := grpc.NewClient(cfg.target,
		grpc.WithTransportCredentials(creds),
		grpc.WithNoProxy(),
		grpc.WithStaticStreamWindowSize(streamWindow), grpc.WithStaticConnWindowSize(connWindow),
		experimental.WithBufferPool(bridge.BufferPool()),
		grpc.WithDefaultCallOptions(
			grpc.ForceCodecV2(frameCodec{}),
			grpc.MaxCallRecvMsgSize(cfg.maxMessage),
			grpc.MaxCallSendMsgSize(cfg.maxMessage),
		),
	)
	if err != nil {
		return fmt.Errorf("target %s: %w", cfg.target, err)
	}
	defer cc.Close()
	cc.Connect()

	opts := []grpc.ServerOption{
		grpc.UnknownServiceHandler(forward(cc)),
		grpc.ForceServerCodecV2(frameCodec{}),
		grpc.InTapHandle(tapMetadata),
		grpc.MaxRecvMsgSize(cfg.maxMessage),
		grpc.MaxSendMsgSize(cfg.maxMessage),
		grpc.NumStreamWorkers(64),
		experimental.BufferPool(bridge.BufferPool()),
		grpc.StaticStreamWindowSize(streamWindow), grpc.StaticConnWindowSize(connWindow),
	}
	if cfg.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.tlsCert, cfg.tlsKey)
		if err != nil {
			return fmt.Errorf("TLS certificate: %w", err)
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(&tls.Config{
			MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}})))
	}
	srv := grpc.NewServer(opts...)
	lis, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(lis) }()

	if cfg.admin != "" {
		stopAdmin, err := serveAdmin(cfg.admin, cfg.pprof)
		if err != nil {
			srv.Stop()
			return err
		}
		defer stopAdmin()
	}

	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	// Open calls get a moment to end, then are cut.
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(2 * time.Second):
		srv.Stop()
		<-stopped
	}
	return nil
}

// `vatcar run`'s runtime defaults (sidecar.DefaultCPUs, DefaultGCPercent,
// DefaultMemoryLimit; main_test.go checks they agree).
const (
	defaultCPUs        = 1
	defaultGCPercent   = 200
	defaultMemoryLimit = 512 << 20
)

// tuneRuntime does what sidecar.TuneRuntime does for `vatcar run` without
// --cpus: GOMAXPROCS, GOGC and GOMEMLIMIT get vatcar's defaults unless the
// environment sets them. It is not called from here because importing the
// sidecar package would link (and initialise) all of it, about 1 MiB more RSS
// than a grpc-go proxy needs.
func tuneRuntime() {
	if n, err := strconv.Atoi(os.Getenv("GOMAXPROCS")); err != nil || n <= 0 {
		runtime.GOMAXPROCS(defaultCPUs)
	}
	if _, ok := os.LookupEnv("GOGC"); !ok {
		debug.SetGCPercent(defaultGCPercent)
	}
	if _, ok := os.LookupEnv("GOMEMLIMIT"); !ok {
		debug.SetMemoryLimit(defaultMemoryLimit)
	}
}

// serveAdmin serves /metrics (the Go collector: go_memstats_mallocs_total,
// go_goroutines, ...) and, with pprof, /debug/pprof on addr.
func serveAdmin(addr string, withPprof bool) (stop func(), err error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector())
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	if withPprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin listen: %w", err)
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(lis) }()
	return func() { _ = hs.Close() }, nil
}

// receivedMD is the context key of a call's request metadata as the server transport
// parsed it, kept by tapMetadata: read-only, shared with grpc-go.
type receivedMD struct{}

// tapMetadata keeps the request metadata where forward finds it without
// metadata.FromIncomingContext's copy, as vatcar's ingress does (bridge.Ingress.TapHandle).
func tapMetadata(ctx context.Context, info *tap.Info) (context.Context, error) {
	return context.WithValue(ctx, receivedMD{}, info.Header), nil
}

// skipHeader reports whether a request metadata key is one gRPC sets itself
// (pseudo-headers, content-type, grpc-timeout, ...), so it is not forwarded; the same
// list as the bridge's.
func skipHeader(key string) bool {
	if strings.HasPrefix(key, ":") {
		return true
	}
	switch key {
	case "content-type", "user-agent", "te", "grpc-timeout", "grpc-encoding",
		"grpc-accept-encoding", "grpc-message", "grpc-status",
		"grpc-status-details-bin", "grpc-message-type",
		"grpc-previous-rpc-attempts", "grpc-retry-pushback-ms":
		return true
	}
	return false
}

// outgoing is ctx with the call's request metadata, less the keys gRPC sets, as the
// outgoing metadata; ctx itself when none is left.
func outgoing(ctx context.Context) context.Context {
	in, _ := ctx.Value(receivedMD{}).(metadata.MD)
	var out metadata.MD
	for k, vs := range in {
		if skipHeader(k) {
			continue
		}
		if out == nil {
			out = make(metadata.MD, len(in))
		}
		out[k] = vs // read-only from here on, as in
	}
	if out == nil {
		return ctx
	}
	return metadata.NewOutgoingContext(ctx, out)
}

// duplex is how every call goes out: whatever the method, messages may flow both ways.
var duplex = &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

// forward returns the handler of every call: it opens a stream on cc for the same
// method, copies request messages to it on a goroutine and response messages back on
// the handler's, and ends the call with the target's headers, trailers and status.
// The stream's context is the call's: the client's deadline goes forward, and a
// client that cancels cancels the forwarded call.
func forward(cc *grpc.ClientConn) grpc.StreamHandler {
	return func(_ any, ss grpc.ServerStream) error {
		method, ok := grpc.MethodFromServerStream(ss)
		if !ok {
			return status.Error(codes.Internal, "grpcproxy: no method name in the stream")
		}
		ctx, cancel := context.WithCancel(ss.Context())
		defer cancel()
		cs, err := cc.NewStream(outgoing(ctx), duplex, method)
		if err != nil {
			return err
		}
		// The request direction. It stops when the client half-closes (then the
		// target's stream is half-closed), when the call ends, or when the target's
		// stream fails (its status reaches the client through RecvMsg below). It is
		// not waited for: a client that keeps sending after the target answered is
		// only cut off once this handler returns.
		go func() {
			for {
				f := new(frame)
				if err := ss.RecvMsg(f); err != nil {
					if errors.Is(err, io.EOF) {
						_ = cs.CloseSend()
					} else {
						// The client's stream broke (cancelled, or a message over
						// the limit): end the target's, which ends the handler.
						cancel()
					}
					return
				}
				if err := cs.SendMsg(f); err != nil {
					f.free() // not handed over when SendMsg failed before encoding
					return
				}
			}
		}()
		// The response direction.
		for first := true; ; first = false {
			f := new(frame)
			err := cs.RecvMsg(f)
			if first {
				// The headers came before the first message or the status: Header
				// does not wait. They go out with the first message, or with the
				// status of a call that has none.
				if md, herr := cs.Header(); herr == nil && len(md) > 0 {
					_ = ss.SetHeader(md)
				}
			}
			if err != nil {
				ss.SetTrailer(cs.Trailer())
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err // the target's status, or the client's cancellation
			}
			if err := ss.SendMsg(f); err != nil {
				f.free() // not handed over when SendMsg failed before encoding
				return err
			}
		}
	}
}

// frame is one message as the buffers gRPC read it into: received with a reference
// taken (no copy), sent by handing the buffers back to gRPC, which frees them once
// written. Whoever holds a frame owns its reference.
type frame struct{ data mem.BufferSlice }

func (f *frame) free() {
	f.data.Free()
	f.data = nil
}

// frameCodec moves *frame messages without parsing or copying them. It names itself
// "proto": the forwarded calls carry application/grpc+proto, what every gRPC app
// sends; as the server's forced codec it answers any content-subtype.
type frameCodec struct{}

var _ encoding.CodecV2 = frameCodec{}

func (frameCodec) Name() string { return "proto" }

func (frameCodec) Marshal(v any) (mem.BufferSlice, error) {
	f, ok := v.(*frame)
	if !ok {
		return nil, fmt.Errorf("grpcproxy codec: marshal %T, want *frame", v)
	}
	data := f.data
	f.data = nil
	return data, nil
}

func (frameCodec) Unmarshal(data mem.BufferSlice, v any) error {
	f, ok := v.(*frame)
	if !ok {
		return fmt.Errorf("grpcproxy codec: unmarshal into %T, want *frame", v)
	}
	data.Ref()
	f.data = data
	return nil
}
