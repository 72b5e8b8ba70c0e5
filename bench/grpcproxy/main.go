// Command grpcproxy is the bench harness's grpc-go reference proxy: one grpc-go server
// and one grpc-go client with vatcar's settings. Two of them joined by gRPC over TLS
// 1.3 make the grpcgo-tls reference pair (an alternative design: two grpc-go servers
// and two clients where vatcar's pair runs one of each plus a Cap'n Proto hop); one
// alone, h2c on both sides, is the grpcgo-h2c reference path: the grpc-go share of
// vatcar's pair. It is a bench reference, not something to deploy.
//
// It serves every method (grpc.UnknownServiceHandler) and forwards each call as a
// full-duplex stream on one client connection to --target, message bytes untouched (a
// raw codec that keeps gRPC's buffers, no copy): request metadata (less the headers
// gRPC sets itself), the content-subtype, deadline and cancellation (through the
// context) go forward; response headers (as soon as they arrive), trailers and status
// come back. A method whose request is one message (by --proto-descriptors: unary and
// server-streaming) has its request read on the handler's goroutine, as vatcar's
// known-unary path does for unary methods (vatcar's server-streaming calls keep a
// request goroutine: here they cost one goroutine less); other calls get a goroutine
// for the request direction.
//
// It has vatcar's grpc-go settings and sockets: the sidecar's static flow-control
// windows on both sides, 64 stream workers, the bridge's buffer pool, raw socket reads
// and writes (internal/rawconn) on every connection, HTTP/2 PING ACKs held
// (internal/pingack) on its h2c sides, where the sidecars hold them on their
// app-facing ones (the TLS hop of the pair stands for vatcar's Cap'n Proto hop, which
// has no HTTP/2), and `vatcar run`'s runtime defaults (as sidecar.TuneRuntime sets
// them: GOMAXPROCS 1, GOGC 200, a 512 MiB soft memory limit, unless the environment
// sets them).
//
// Usage:
//
//	grpcproxy --listen HOST:PORT --target HOST:PORT [--tls-cert FILE --tls-key FILE]
//	          [--target-tls] [--proto-descriptors FILE] [--admin-listen HOST:PORT [--pprof]]
//	          [--max-message-size BYTES] [--addr-file FILE]
//
// With --tls-cert and --tls-key it listens with TLS 1.3 only, else h2c. With
// --target-tls it dials the target with TLS 1.3 without verifying its certificate (the
// harness's self-signed one). --proto-descriptors is a FileDescriptorSet (protoc
// --descriptor_set_out) naming the methods whose request is one message. The admin
// listener serves Prometheus /metrics (Go runtime figures) and, with --pprof,
// /debug/pprof. Either listener may have port 0: --addr-file then tells the bound
// addresses, written once both listen ("listen HOST:PORT" and "admin HOST:PORT"
// lines).
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
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/vatcar/vatcar/bridge"
	"github.com/vatcar/vatcar/internal/pingack"
	"github.com/vatcar/vatcar/internal/rawconn"
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
	descriptors     string
	addrFile        string
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
	fs.StringVar(&c.addrFile, "addr-file", "", "once listening, write the bound addresses (\"listen HOST:PORT\", \"admin HOST:PORT\" lines) to `file`")
	fs.StringVar(&c.descriptors, "proto-descriptors", "", "a FileDescriptorSet `file` naming the methods whose request is one message")
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
	single, err := singleRequestMethods(cfg.descriptors)
	if err != nil {
		return err
	}

	creds := insecure.NewCredentials()
	if cfg.targetTLS {
		// A bench peer: the back proxy has the harness's throwaway self-signed
		// certificate, and nginx's and HAProxy's back hops are unverified too.
		creds = credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true})
	}
	// passthrough: the target as given, as the sidecar dials its backend.
	cc, err := grpc.NewClient("passthrough:///"+cfg.target,
		grpc.WithTransportCredentials(creds),
		grpc.WithContextDialer(dialer(!cfg.targetTLS)),
		grpc.WithNoProxy(),
		grpc.WithStaticStreamWindowSize(streamWindow), grpc.WithStaticConnWindowSize(connWindow),
		experimental.WithBufferPool(bridge.BufferPool()),
		grpc.WithDefaultCallOptions(
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
		grpc.UnknownServiceHandler((&proxy{cc: cc, single: single}).forward),
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
	go func() { serveErr <- srv.Serve(rawListener{Listener: lis, holdAcks: cfg.tlsCert == ""}) }()

	adminAddr := ""
	if cfg.admin != "" {
		stopAdmin, addr, err := serveAdmin(cfg.admin, cfg.pprof)
		if err != nil {
			srv.Stop()
			return err
		}
		defer stopAdmin()
		adminAddr = addr
	}
	if cfg.addrFile != "" {
		if err := writeAddrFile(cfg.addrFile, lis.Addr().String(), adminAddr); err != nil {
			srv.Stop()
			return err
		}
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
func serveAdmin(addr string, withPprof bool) (stop func(), bound string, err error) {
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
		return nil, "", fmt.Errorf("admin listen: %w", err)
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(lis) }()
	return func() { _ = hs.Close() }, lis.Addr().String(), nil
}

// writeAddrFile writes the bound addresses to file, "listen HOST:PORT" and (with an
// admin listener) "admin HOST:PORT" lines, in one rename: a reader sees all or
// nothing.
func writeAddrFile(file, listen, admin string) error {
	text := "listen " + listen + "\n"
	if admin != "" {
		text += "admin " + admin + "\n"
	}
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
		return fmt.Errorf("--addr-file: %w", err)
	}
	if err := os.Rename(tmp, file); err != nil {
		return fmt.Errorf("--addr-file: %w", err)
	}
	return nil
}

// receivedMD is the context key of a call's request metadata as the server transport
// parsed it, kept by tapMetadata: read-only, shared with grpc-go.
type receivedMD struct{}

// tapMetadata keeps the request metadata where forward finds it without
// metadata.FromIncomingContext's copy, as vatcar's ingress does (bridge.Ingress.TapHandle).
func tapMetadata(ctx context.Context, info *tap.Info) (context.Context, error) {
	return context.WithValue(ctx, receivedMD{}, info.Header), nil
}

// outgoing is ctx with the call's request metadata in, less the keys gRPC sets, as
// the outgoing metadata; ctx itself when none is left.
func outgoing(ctx context.Context, in metadata.MD) context.Context {
	var out metadata.MD
	for k, vs := range in {
		if bridge.ReservedHeader(k) {
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

// proxy forwards every call to cc.
type proxy struct {
	cc *grpc.ClientConn
	// single holds the full names (/pkg.Service/Method) of the methods whose request
	// is one message; read-only.
	single map[string]bool
}

// commonSubtypes are the call options of the content-subtypes nearly every call
// has ("" and "proto"), made once; read-only.
var commonSubtypes = map[string][]grpc.CallOption{
	"":      {grpc.ForceCodecV2(frameCodec{name: ""})},
	"proto": {grpc.ForceCodecV2(frameCodec{name: "proto"})},
}

// callOptions returns the options that make a call with the client's content-subtype:
// made once for the common ones, per call for others (a client choosing the subtype
// cannot grow a cache).
func (p *proxy) callOptions(subtype string) []grpc.CallOption {
	if o, ok := commonSubtypes[subtype]; ok {
		return o
	}
	return []grpc.CallOption{grpc.ForceCodecV2(frameCodec{name: subtype})}
}

// contentSubtype is the subtype of a gRPC content-type ("json" of
// application/grpc+json), "" when it has none; lower case, as grpc-go sends it.
func contentSubtype(md metadata.MD) string {
	var ct string
	if vs := md["content-type"]; len(vs) > 0 {
		ct = vs[0]
	}
	rest, ok := strings.CutPrefix(ct, "application/grpc+")
	if !ok {
		return ""
	}
	if i := strings.IndexByte(rest, ';'); i >= 0 {
		rest = rest[:i]
	}
	return strings.ToLower(rest)
}

// forward is the handler of every call: it opens a stream on p.cc for the same
// method, copies request messages to it (on the handler's goroutine for a method
// whose request is one message, else on a goroutine of its own) and response
// messages back on the handler's, and ends the call with the target's headers,
// trailers and status. The stream's context is the call's: the client's deadline
// goes forward, and a client that cancels cancels the forwarded call.
func (p *proxy) forward(_ any, ss grpc.ServerStream) error {
	method, ok := grpc.MethodFromServerStream(ss)
	if !ok {
		return status.Error(codes.Internal, "grpcproxy: no method name in the stream")
	}
	in, _ := ss.Context().Value(receivedMD{}).(metadata.MD)
	ctx, cancel := context.WithCancel(ss.Context())
	defer cancel()
	cs, err := p.cc.NewStream(outgoing(ctx, in), duplex, method, p.callOptions(contentSubtype(in))...)
	if err != nil {
		return err
	}
	if p.single[method] {
		// The one request message, on this goroutine. A client that half-closes
		// without one has the target answer it.
		f := new(frame)
		switch err := ss.RecvMsg(f); {
		case errors.Is(err, io.EOF):
		case err != nil:
			return err // the client's stream broke; cancel ends the target's
		default:
			if err := cs.SendMsg(f); err != nil {
				f.free() // not handed over when SendMsg failed before encoding
			}
		}
		_ = cs.CloseSend() // a failed send's status comes from RecvMsg below
	} else {
		// The request direction. It stops when the client half-closes (then the
		// target's stream is half-closed), when the call ends, or when the target's
		// stream fails (its status reaches the client through RecvMsg below). It is
		// not waited for: a client that keeps sending after the target answered is
		// only cut off once this handler returns.
		go pumpRequests(ss, cs, cancel)
	}
	// The response direction: headers as soon as the target sends them (Header
	// waits for them, or for the end of a call that has none), so a client waiting
	// for them does not wait for the first message; then messages.
	if md, err := cs.Header(); err == nil && md != nil {
		if err := ss.SendHeader(md); err != nil {
			return err
		}
	}
	for {
		f := new(frame)
		if err := cs.RecvMsg(f); err != nil {
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

// pumpRequests copies the client's request messages to cs until the client
// half-closes (then it half-closes cs) or a stream fails; a broken client stream
// (cancelled, or a message over the limit) cancels cs, which ends the handler.
func pumpRequests(ss grpc.ServerStream, cs grpc.ClientStream, cancel context.CancelFunc) {
	for {
		f := new(frame)
		if err := ss.RecvMsg(f); err != nil {
			if errors.Is(err, io.EOF) {
				_ = cs.CloseSend()
			} else {
				cancel()
			}
			return
		}
		if err := cs.SendMsg(f); err != nil {
			f.free() // not handed over when SendMsg failed before encoding
			return
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

// frameCodec moves *frame messages without parsing or copying them. Its name is the
// content-subtype a forwarded call carries, the client's ("" for plain
// application/grpc); as the server's forced codec it answers any content-subtype.
type frameCodec struct{ name string }

var _ encoding.CodecV2 = frameCodec{}

func (c frameCodec) Name() string { return c.name }

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

// userTimeout is the sidecar's appUserTimeout: grpc-go's default keepalive timeout,
// which it makes a server connection's TCP_USER_TIMEOUT, but only on a *net.TCPConn,
// so it is set here before the socket is wrapped.
const userTimeout = 20 * time.Second

// rawListener hands the server its connections as the sidecar's ingress has them:
// raw reads and writes, and with holdAcks (h2c) lone PING ACKs held.
type rawListener struct {
	net.Listener
	holdAcks bool
}

func (l rawListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	_ = rawconn.SetUserTimeout(c, int(userTimeout/time.Millisecond))
	if l.holdAcks {
		return pingack.New(rawconn.Wrap(c), pingack.Delay), nil
	}
	return rawconn.Wrap(c), nil
}

// dialer dials the target as the sidecar dials its backend: raw reads and writes,
// and with holdAcks (h2c) lone PING ACKs held. TLS, when the client has it, goes on
// top of the raw socket, as on vatcar's TLS hop.
func dialer(holdAcks bool) func(context.Context, string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		if holdAcks {
			return pingack.New(rawconn.Wrap(c), pingack.Delay), nil
		}
		return rawconn.Wrap(c), nil
	}
}

// singleRequestMethods reads a FileDescriptorSet and returns the full names of its
// methods whose request is one message (not client-streaming); none without a file.
func singleRequestMethods(file string) (map[string]bool, error) {
	if file == "" {
		return nil, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("--proto-descriptors: %w", err)
	}
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(b, &set); err != nil {
		return nil, fmt.Errorf("--proto-descriptors %s: not a FileDescriptorSet: %w", file, err)
	}
	out := make(map[string]bool)
	for _, f := range set.GetFile() {
		prefix := "/"
		if f.GetPackage() != "" {
			prefix += f.GetPackage() + "."
		}
		for _, svc := range f.GetService() {
			for _, m := range svc.GetMethod() {
				if !m.GetClientStreaming() {
					out[prefix+svc.GetName()+"/"+m.GetName()] = true
				}
			}
		}
	}
	return out, nil
}
