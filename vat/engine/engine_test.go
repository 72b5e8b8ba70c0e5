package engine_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	"capnproto.org/go/capnp/v3/flowcontrol"
	"capnproto.org/go/capnp/v3/rpc"

	"github.com/vatcar/vatcar/proto/captp"
	"github.com/vatcar/vatcar/vat/engine"
)

const unknownText = "Unknown persistent service ID"

// recorder is a Sink that records the header keys it gets, in order.
type recorder struct {
	mu    sync.Mutex
	keys  []string
	sends int
}

func (r *recorder) Headers(ctx context.Context, call captp.Sink_headers) error {
	md, err := call.Args().Md()
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := 0; i < md.Len(); i++ {
		k, _ := md.At(i).Key()
		r.keys = append(r.keys, k)
	}
	return nil
}

func (r *recorder) Send(ctx context.Context, call captp.Sink_send) error {
	r.mu.Lock()
	r.sends++
	r.mu.Unlock()
	return nil
}

func (r *recorder) Close(ctx context.Context, call captp.Sink_close) error { return nil }

func (r *recorder) snapshot() ([]string, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.keys...), r.sends
}

// service is a GrpcService: open echoes down as up (after gate, if set);
// unary "block" waits for its context and reports the cancellation; unary
// "hold" waits for hold, whatever its context does.
type service struct {
	gate      chan struct{}
	cancelled chan struct{}
	hold      chan struct{}
}

func (s *service) Unary(ctx context.Context, call captp.GrpcService_unary) error {
	head, _ := call.Args().Call()
	m, _ := head.Method()
	if m == "block" {
		call.Go()
		<-ctx.Done()
		close(s.cancelled)
		return ctx.Err()
	}
	if m == "hold" {
		call.Go()
		<-s.hold
		return errors.New("held")
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	reply, err := res.NewReply()
	if err != nil {
		return err
	}
	req, _ := call.Args().Request()
	return reply.SetMessage_(append([]byte("echo:"), req...))
}

func (s *service) Open(ctx context.Context, call captp.GrpcService_open) error {
	if s.gate != nil {
		<-s.gate
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetUp(call.Args().Down().AddRef())
}

// restorer restores "svc" to a service.
type restorer struct{ svc *service }

func (r *restorer) Restore(ctx context.Context, call captp.Restorer_restore) error {
	id, _ := call.Args().Id()
	if string(id) != "svc" {
		return exc.New(exc.Failed, "", unknownText)
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetCap(capnp.Client(captp.GrpcService_ServerToClient(r.svc)))
}

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		ch <- c
	}()
	a, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	if b == nil {
		t.Fatal("accept failed")
	}
	return a, b
}

// peer is the far side of a test connection: go-capnp's rpc.Conn or the
// engine.
type peer struct {
	bootstrap func(context.Context) capnp.Client
	close     func()
	done      <-chan struct{}
}

func goPeer(nc net.Conn, boot capnp.Client) peer {
	c := rpc.NewConn(rpc.NewStreamTransport(nc), &rpc.Options{BootstrapClient: boot})
	return peer{bootstrap: c.Bootstrap, close: func() { c.Close() }, done: c.Done()}
}

func enginePeer(nc net.Conn, opts engine.Options) (*engine.Conn, peer) {
	if os.Getenv("ENGINE_DEBUG") != "" {
		opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	c := engine.NewConn(engine.NewStreamCodec(nc, 0), &opts)
	return c, peer{bootstrap: c.Bootstrap, close: func() { c.Close() }, done: c.Done()}
}

// roles runs f with the engine as the client of each kind of server: go-capnp
// and the engine itself; then with go-capnp as the engine's client.
type setup struct {
	name string
	// client bootstraps; server serves boot.
	make func(t *testing.T, boot capnp.Client) (client peer, clientConn *engine.Conn, serverConn *engine.Conn)
}

var setups = []setup{
	{"engine-to-gocapnp", func(t *testing.T, boot capnp.Client) (peer, *engine.Conn, *engine.Conn) {
		a, b := tcpPair(t)
		srv := goPeer(b, boot)
		t.Cleanup(srv.close)
		ec, cl := enginePeer(a, engine.Options{})
		t.Cleanup(cl.close)
		return cl, ec, nil
	}},
	{"gocapnp-to-engine", func(t *testing.T, boot capnp.Client) (peer, *engine.Conn, *engine.Conn) {
		a, b := tcpPair(t)
		es, srv := enginePeer(b, engine.Options{Bootstrap: boot})
		t.Cleanup(srv.close)
		cl := goPeer(a, capnp.Client{})
		t.Cleanup(cl.close)
		return cl, nil, es
	}},
	{"engine-to-engine", func(t *testing.T, boot capnp.Client) (peer, *engine.Conn, *engine.Conn) {
		a, b := tcpPair(t)
		es, srv := enginePeer(b, engine.Options{Bootstrap: boot})
		t.Cleanup(srv.close)
		ec, cl := enginePeer(a, engine.Options{})
		t.Cleanup(cl.close)
		return cl, ec, es
	}},
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// poll waits for cond, failing after a generous timeout.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func zeroStats(c *engine.Conn) func() bool {
	return func() bool { return c == nil || c.Stats() == (engine.Stats{}) }
}

func headers(keys ...string) func(captp.Sink_headers_Params) error {
	return func(p captp.Sink_headers_Params) error {
		md, err := p.NewMd(int32(len(keys)))
		if err != nil {
			return err
		}
		for i, k := range keys {
			if err := md.At(i).SetKey(k); err != nil {
				return err
			}
		}
		return nil
	}
}

// TestPipelinedRestoreAndUnary: bootstrap, restore and unary in one
// flight (both pipelined), then the tables empty once released.
func TestPipelinedRestoreAndUnary(t *testing.T) {
	for _, s := range setups {
		t.Run(s.name, func(t *testing.T) {
			ctx := ctxT(t)
			boot := capnp.Client(captp.Restorer_ServerToClient(&restorer{svc: &service{}}))
			cl, cc, sc := s.make(t, boot)
			r := captp.Restorer(cl.bootstrap(ctx))
			fut, rel := r.Restore(ctx, func(p captp.Restorer_restore_Params) error { return p.SetId([]byte("svc")) })
			svc := captp.GrpcService(fut.Cap())
			ufut, urel := svc.Unary(ctx, func(p captp.GrpcService_unary_Params) error { return p.SetRequest([]byte("hi")) })
			res, err := ufut.Struct()
			if err != nil {
				t.Fatal(err)
			}
			reply, _ := res.Reply()
			body, _ := reply.Message_()
			if string(body) != "echo:hi" {
				t.Fatalf("reply %q", body)
			}
			urel()
			rel()
			r.Release()
			poll(t, "client tables empty", zeroStats(cc))
			poll(t, "server tables empty", zeroStats(sc))
		})
	}
}

// TestUnknownService: the restore's exception text crosses unchanged.
func TestUnknownService(t *testing.T) {
	for _, s := range setups {
		t.Run(s.name, func(t *testing.T) {
			ctx := ctxT(t)
			boot := capnp.Client(captp.Restorer_ServerToClient(&restorer{svc: &service{}}))
			cl, _, _ := s.make(t, boot)
			r := captp.Restorer(cl.bootstrap(ctx))
			defer r.Release()
			fut, rel := r.Restore(ctx, func(p captp.Restorer_restore_Params) error { return p.SetId([]byte("nope")) })
			defer rel()
			_, err := fut.Struct()
			if err == nil || !strings.Contains(err.Error(), unknownText) {
				t.Fatalf("err = %v, want %q", err, unknownText)
			}
		})
	}
}

// TestFinishCancelsHandler: the caller's context ends -> Finish -> the
// handler's context ends.
func TestFinishCancelsHandler(t *testing.T) {
	for _, s := range setups {
		t.Run(s.name, func(t *testing.T) {
			ctx := ctxT(t)
			svc := &service{cancelled: make(chan struct{})}
			boot := capnp.Client(captp.GrpcService_ServerToClient(svc))
			cl, cc, sc := s.make(t, boot)
			g := captp.GrpcService(cl.bootstrap(ctx))
			defer g.Release()
			cctx, cancel := context.WithCancel(ctx)
			fut, rel := g.Unary(cctx, withMethod("block"))
			defer rel()
			go func() { time.Sleep(20 * time.Millisecond); cancel() }()
			if _, err := fut.Struct(); !errors.Is(err, context.Canceled) && (err == nil || !strings.Contains(err.Error(), "cancel")) {
				t.Fatalf("err = %v, want cancelled", err)
			}
			select {
			case <-svc.cancelled:
			case <-ctx.Done():
				t.Fatal("handler not cancelled")
			}
			rel()
			g.Release()
			poll(t, "client tables empty", zeroStats(cc))
			poll(t, "server tables empty", zeroStats(sc))
		})
	}
}

// TestEOrderAcrossEmbargo: the client passes its own Sink to open, which
// returns it as up; calls pipelined on up (they loop through the server)
// and calls made after the Return (local, embargoed) arrive in order.
func TestEOrderAcrossEmbargo(t *testing.T) {
	for _, s := range setups {
		t.Run(s.name, func(t *testing.T) {
			if s.name == "engine-to-gocapnp" {
				// go-capnp's server drains pipelined calls through its
				// import's Recv, which returns a nil PipelineCaller when
				// the forwarded call has already returned, and its
				// AnswerQueue then panics (v3.1.0-alpha.2, import.go
				// Recv + answerqueue.go Fulfill): a go-capnp bug that a
				// fast peer triggers.
				t.Skip("go-capnp v3.1.0-alpha.2 panics here as the server")
			}
			ctx := ctxT(t)
			svc := &service{gate: make(chan struct{})}
			boot := capnp.Client(captp.GrpcService_ServerToClient(svc))
			cl, cc, sc := s.make(t, boot)
			g := captp.GrpcService(cl.bootstrap(ctx))
			rec := &recorder{}
			down := captp.Sink_ServerToClient(rec)
			fut, rel := g.Open(ctx, func(p captp.GrpcService_open_Params) error { return p.SetDown(down.AddRef()) })
			up := fut.Up()
			var rels []capnp.ReleaseFunc
			for i := 0; i < 5; i++ {
				_, r := up.Headers(ctx, headers(string(rune('a'+i))))
				rels = append(rels, r)
			}
			close(svc.gate)
			if _, err := fut.Struct(); err != nil {
				t.Fatal(err)
			}
			var last *captp.Sink_headers_Results_Future
			for i := 5; i < 10; i++ {
				f, r := up.Headers(ctx, headers(string(rune('a'+i))))
				rels = append(rels, r)
				last = &f
			}
			if _, err := last.Struct(); err != nil {
				t.Fatal(err)
			}
			poll(t, "ten headers", func() bool { k, _ := rec.snapshot(); return len(k) == 10 })
			keys, _ := rec.snapshot()
			if got := strings.Join(keys, ""); got != "abcdefghij" {
				t.Fatalf("order %q, want abcdefghij", got)
			}
			for _, r := range rels {
				r()
			}
			rel()
			down.Release()
			g.Release()
			poll(t, "client tables empty", zeroStats(cc))
			poll(t, "server tables empty", zeroStats(sc))
		})
	}
}

// TestStreaming: a -> stream method with a flow limiter on the client.
func TestStreaming(t *testing.T) {
	for _, s := range setups {
		t.Run(s.name, func(t *testing.T) {
			ctx := ctxT(t)
			rec := &recorder{}
			boot := capnp.Client(captp.Sink_ServerToClient(rec))
			cl, cc, sc := s.make(t, boot)
			sink := captp.Sink(cl.bootstrap(ctx))
			sink.SetFlowLimiter(flowcontrol.NewFixedLimiter(4 << 10))
			for i := 0; i < 500; i++ {
				if err := sink.Send(ctx, func(p captp.Sink_send_Params) error {
					_, err := p.NewChunks(1)
					return err
				}); err != nil {
					t.Fatal(err)
				}
			}
			if err := sink.WaitStreaming(); err != nil {
				t.Fatal(err)
			}
			if _, n := rec.snapshot(); n != 500 {
				t.Fatalf("%d sends arrived, want 500", n)
			}
			sink.Release()
			poll(t, "client tables empty", zeroStats(cc))
			poll(t, "server tables empty", zeroStats(sc))
		})
	}
}

// TestBootstrapObjectID: OCaml's restore: a Bootstrap with an object id
// gets the service; an unknown id fails with OCaml's text; a plain
// Bootstrap still gets the Restorer.
func TestBootstrapObjectID(t *testing.T) {
	ctx := ctxT(t)
	svc := &service{}
	a, b := tcpPair(t)
	_, srv := enginePeer(b, engine.Options{
		Bootstrap: capnp.Client(captp.Restorer_ServerToClient(&restorer{svc: svc})),
		Restore: func(ctx context.Context, id []byte) (capnp.Client, error) {
			if string(id) != "svc\x00\xff" {
				return capnp.Client{}, exc.New(exc.Failed, "", unknownText)
			}
			return capnp.Client(captp.GrpcService_ServerToClient(svc)), nil
		},
	})
	defer srv.close()
	ec, cl := enginePeer(a, engine.Options{})
	defer cl.close()

	g := captp.GrpcService(ec.BootstrapID(ctx, []byte("svc\x00\xff")))
	fut, rel := g.Unary(ctx, func(p captp.GrpcService_unary_Params) error { return p.SetRequest([]byte("x")) })
	if _, err := fut.Struct(); err != nil {
		t.Fatal(err)
	}
	rel()
	g.Release()

	bad := ec.BootstrapID(ctx, []byte("other"))
	if err := bad.Resolve(ctx); err != nil {
		t.Fatal(err)
	}
	_, err := captp.GrpcService(bad).Unary(ctx, nil)
	_ = err
	fut2, rel2 := captp.GrpcService(bad).Unary(ctx, nil)
	if _, err := fut2.Struct(); err == nil || !strings.Contains(err.Error(), unknownText) {
		t.Fatalf("unknown id: err = %v", err)
	}
	rel2()
	bad.Release()

	r := captp.Restorer(ec.Bootstrap(ctx))
	rf, rrel := r.Restore(ctx, func(p captp.Restorer_restore_Params) error { return p.SetId([]byte("svc")) })
	if _, err := rf.Struct(); err != nil {
		t.Fatalf("plain bootstrap restore: %v", err)
	}
	rrel()
	r.Release()
	poll(t, "tables empty", zeroStats(ec))
}

// TestCloseFailsCalls: calls in flight fail with a Disconnected exception
// when the peer goes away, and Done closes. The go-capnp server's call
// holds until the end: a go-capnp handler that returns while its
// connection shuts down sends a Return of empty results, not its
// exception (v3.1.0-alpha.2's prepareSendException skips the exception
// once the connection is closing but still sends the message), and that
// Return may beat the close.
func TestCloseFailsCalls(t *testing.T) {
	for _, tc := range []struct {
		name, method string
		serve        func(net.Conn, capnp.Client) peer
	}{
		{"gocapnp", "hold", goPeer},
		{"engine", "block", func(nc net.Conn, boot capnp.Client) peer {
			_, p := enginePeer(nc, engine.Options{Bootstrap: boot})
			return p
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxT(t)
			svc := &service{cancelled: make(chan struct{}), hold: make(chan struct{})}
			a, b := tcpPair(t)
			srv := tc.serve(b, capnp.Client(captp.GrpcService_ServerToClient(svc)))
			ec, cl := enginePeer(a, engine.Options{})
			defer cl.close()
			g := captp.GrpcService(ec.Bootstrap(ctx))
			defer g.Release()
			fut, rel := g.Unary(ctx, withMethod(tc.method))
			defer rel()
			closed := make(chan struct{})
			go func() {
				defer close(closed)
				time.Sleep(20 * time.Millisecond)
				srv.close()
			}()
			_, err := fut.Struct()
			if !exc.IsType(err, exc.Disconnected) {
				t.Errorf("err = %v (%v), want disconnected", err, exc.TypeOf(err))
			}
			select {
			case <-ec.Done():
			case <-ctx.Done():
				t.Error("engine conn not done")
			}
			close(svc.hold) // go-capnp's Close waits for its handler
			<-closed
		})
	}
}

// TestCapLimits: past MaxExports (caller side) or MaxImports (callee side)
// the call that would cross the limit fails with a named Overloaded
// exception; the connection lives and the tables drain afterwards.
func TestCapLimits(t *testing.T) {
	for _, tc := range []struct {
		name         string
		client, srv  engine.Options
		wantContains string
		limitOnSrv   bool // which side's OnLimit hears of it
	}{
		{"exports", engine.Options{MaxExports: 1}, engine.Options{}, "too many capabilities exported", false},
		{"imports", engine.Options{}, engine.Options{MaxImports: 1}, "too many capabilities imported", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxT(t)
			lim := &limits{}
			if tc.limitOnSrv {
				tc.srv.OnLimit = lim.on
			} else {
				tc.client.OnLimit = lim.on
			}
			svc := &service{gate: make(chan struct{})}
			a, b := tcpPair(t)
			tc.srv.Bootstrap = capnp.Client(captp.GrpcService_ServerToClient(svc))
			sc, srv := enginePeer(b, tc.srv)
			defer srv.close()
			cc, cl := enginePeer(a, tc.client)
			defer cl.close()
			g := captp.GrpcService(cc.Bootstrap(ctx))
			d1 := captp.Sink_ServerToClient(&recorder{})
			d2 := captp.Sink_ServerToClient(&recorder{})
			f1, rel1 := g.Open(ctx, func(p captp.GrpcService_open_Params) error { return p.SetDown(d1.AddRef()) })
			poll(t, "the first open to hold its Sink", func() bool { return sc.Stats().Imports == 1 })
			f2, rel2 := g.Open(ctx, func(p captp.GrpcService_open_Params) error { return p.SetDown(d2.AddRef()) })
			_, err := f2.Struct()
			if err == nil || !strings.Contains(err.Error(), tc.wantContains) || !exc.IsType(err, exc.Overloaded) {
				t.Fatalf("second open: %v, want Overloaded %q", err, tc.wantContains)
			}
			if got := lim.String(); got != tc.name {
				t.Errorf("OnLimit got %q, want %q", got, tc.name)
			}
			close(svc.gate)
			if _, err := f1.Struct(); err != nil {
				t.Fatalf("first open: %v", err)
			}
			rel2()
			rel1()
			d1.Release()
			d2.Release()
			g.Release()
			poll(t, "client tables empty", zeroStats(cc))
			poll(t, "server tables empty", zeroStats(sc))
		})
	}
}

// blocker is a GrpcService whose unary calls run until cancelled; started
// hears of each.
type blocker struct{ started chan struct{} }

func (b *blocker) Unary(ctx context.Context, call captp.GrpcService_unary) error {
	call.Go()
	b.started <- struct{}{}
	<-ctx.Done()
	return ctx.Err()
}

func (b *blocker) Open(context.Context, captp.GrpcService_open) error {
	return errors.New("not implemented")
}

// TestCancelThenCallAgain: a call cancelled while it runs (its Finish
// reaches the callee before the Return is sent), then a new call at once,
// many times: the caller reuses the freed question id as soon as the Return
// arrives, and the callee must have freed it by then (it once freed it
// after sending, and aborted the connection for an id in use). Found by
// review; the connection died within 20 rounds.
func TestCancelThenCallAgain(t *testing.T) {
	b := &blocker{started: make(chan struct{}, 1)}
	a, bb := tcpPair(t)
	sc, srv := enginePeer(bb, engine.Options{Bootstrap: capnp.Client(captp.GrpcService_ServerToClient(b))})
	defer srv.close()
	ec, cl := enginePeer(a, engine.Options{})
	defer cl.close()
	ctx := ctxT(t)
	g := captp.GrpcService(ec.Bootstrap(ctx))
	defer g.Release()
	for i := range 300 {
		cctx, cancel := context.WithCancel(ctx)
		fut, rel := g.Unary(cctx, nil)
		select {
		case <-b.started:
		case <-ctx.Done():
			t.Fatalf("call %d did not start; caller's connection: %v, callee's: %v", i, ec.Err(), sc.Err())
		}
		cancel()
		_, _ = fut.Struct()
		rel()
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("callee's connection ended: %v", err)
	}
}

// withMethod fills a GrpcService.unary call's params with a call head
// naming method, and nothing else.
func withMethod(method string) func(captp.GrpcService_unary_Params) error {
	return func(p captp.GrpcService_unary_Params) error {
		head, err := p.NewCall()
		if err != nil {
			return err
		}
		return head.SetMethod(method)
	}
}
