package bridge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/vatcar/vatcar/proto/captp"
	"github.com/vatcar/vatcar/vat/engine"
)

// Ingress turns gRPC calls into calls on GrpcService capabilities. Use
// Handler with grpc.UnknownServiceHandler (and ServerOptions for the codec
// and sizes), or NewServer. An Ingress is safe for concurrent use. It keeps
// goroutines parked for its streams' responses: Close ends them once its
// servers have stopped (unclosed, they end after idling for 10-20 s).
type Ingress struct {
	director Director
	borrowed bool // IngressConfig.BorrowedClients
	max      int
	maxMD    int // metadata limit
	kinds    Kinds
	log      *slog.Logger
	idle     time.Duration      // IngressConfig.StreamIdleTimeout; zero: off
	onCall   func(*ingressCall) // tests: called as each call starts
	onCapTP  func(context.Context, error)
	onMsg    func(sent bool, size int) // IngressConfig.OnMessage
	pool     *workers                  // runs the response Sinks' drains; ended by Close

	unaryCalls, streamCalls atomic.Int64 // calls by path taken
	knownUnaryCalls         atomic.Int64 // unary calls that took the known-unary fast path
	directCalls             atomic.Int64 // unary calls made with engine.CallDirect's direct path
}

// NewIngress returns an Ingress for a valid config.
func NewIngress(cfg IngressConfig) (*Ingress, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("new ingress: %w", err)
	}
	in := &Ingress{
		director: cfg.Director,
		borrowed: cfg.BorrowedClients,
		max:      maxMessageSize(cfg.MaxMessageSize),
		maxMD:    maxMetadataSize(cfg.MaxMetadataSize),
		kinds:    cfg.Kinds,
		log:      logger(cfg.Logger),
		idle:     cfg.StreamIdleTimeout,
		onCapTP:  cfg.OnCapTPFailure,
		onMsg:    cfg.OnMessage,
		pool:     newWorkers(),
	}
	return in, nil
}

// Close ends the goroutines the ingress keeps parked to run its streams'
// responses; busy ones end when they finish. Calls still in progress, and
// any later ones, go on without them (a goroutine for each burst of
// messages). Call it once the ingress's servers have stopped (Serve has
// returned; handlers still finishing then run their streams' responses on
// goroutines of their own). Calling it again does nothing.
func (in *Ingress) Close() { in.pool.close() }

// Handler returns the stream handler that bridges every call; it expects the
// server to use the raw codec (see ServerOptions).
func (in *Ingress) Handler() grpc.StreamHandler { return in.handle }

// ServerOptions returns the options a grpc.Server needs to bridge every
// method: the unknown-service handler, the raw codec forced for every
// content-subtype (no payload is ever parsed), the message size limits,
// and a pool of stream workers (streamWorkers). Add your own interceptors
// and stats handlers after them (a stats handler must not keep an
// InPayload's or OutPayload's Payload past its event: the bridge reuses
// those messages), and grpc.InTapHandle(in.TapHandle(next)) to save a copy
// of every call's metadata.
func (in *Ingress) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.UnknownServiceHandler(in.handle),
		grpc.ForceServerCodecV2(rawCodec{name: "proto", onMessage: in.onMsg}),
		grpc.MaxRecvMsgSize(in.max),
		grpc.MaxSendMsgSize(in.max),
		grpc.NumStreamWorkers(streamWorkers),
		experimental.BufferPool(&bufferPool),
	}
}

// streamWorkers is how many goroutines the ingress server keeps to run calls
// on (grpc.NumStreamWorkers). A worker keeps the stack the previous call grew
// (growStack's 16 KiB frame leaves a 32 KiB stack) until the garbage
// collector shrinks it, where a goroutine per call starts small and copies
// its stack as it grows; calls beyond the workers' number get a goroutine
// each, as without workers. The workers start with the server (a server
// never stopped keeps them) and cost up to 64 x 32 KiB of stacks once busy.
// Quick harness runs,
// 3 rounds each (2026-11-25): throughput against nginx-tls at 64 calls in
// flight 0.99-1.03x -> 1.06-1.15x, proxy CPU per call 1.05-1.09x -> 0.94-1.05x
// nginx-tls's.
const streamWorkers = 64

// receivedMD is the context key of a call's request metadata as the server
// transport parsed it (a metadata.MD; keys are lowercase, as HTTP/2
// requires). It is the map grpc-go puts in the incoming context, shared:
// read-only.
type receivedMD struct{}

// TapHandle returns a tap handle (grpc.InTapHandle) for the ingress's
// server that keeps each call's request metadata where the bridge finds it
// without metadata.FromIncomingContext, which copies every key and value
// (4-8% of the importing sidecar's allocations at 64 small calls in
// flight), and then runs next, if not nil (a server takes one tap handle).
// grpc-go runs it on the connection's reader, before the call's stream
// exists. With it the bridge forwards the metadata the client sent: an
// interceptor that replaces the incoming metadata does not change what is
// forwarded.
func (in *Ingress) TapHandle(next tap.ServerInHandle) tap.ServerInHandle {
	return func(ctx context.Context, info *tap.Info) (context.Context, error) {
		ctx = context.WithValue(ctx, receivedMD{}, info.Header)
		if next == nil {
			return ctx, nil
		}
		return next(ctx, info)
	}
}

// requestMetadata returns the metadata of the call of ctx, read-only: the
// tapped map (TapHandle), or a copy from the incoming context on a server
// without the tap.
func requestMetadata(ctx context.Context) metadata.MD {
	if md, ok := ctx.Value(receivedMD{}).(metadata.MD); ok {
		return md
	}
	md, _ := metadata.FromIncomingContext(ctx)
	return md
}

// NewServer returns a grpc.Server with ServerOptions followed by opts.
func (in *Ingress) NewServer(opts ...grpc.ServerOption) *grpc.Server {
	return grpc.NewServer(append(in.ServerOptions(), opts...)...)
}

// handle bridges one call. A method known to be unary reads its request on
// this goroutine (see recvUnary). Any other call's messages are read on a
// goroutine from the start (a bidi server may speak first). If, once that
// goroutine had the turns it needed (yieldToPump), the client has sent
// exactly one message and half-closed, the call goes out as one unary
// capnp call; otherwise (or if the request is still arriving) as a stream. Both paths carry every
// call kind correctly; the first only saves round trips.
func (in *Ingress) handle(_ any, ss grpc.ServerStream) error {
	growStack()
	ctx := ss.Context()
	method, ok := grpc.MethodFromServerStream(ss)
	if !ok {
		return status.Error(codes.Internal, "bridge: no method name in the stream")
	}
	// Oversized metadata stops here, before it costs a connection or a
	// CapTP message that would hold up the connection's other calls.
	md := requestMetadata(ctx)
	if err := checkMetadata("request metadata", md, keepRequest, in.maxMD); err != nil {
		in.log.DebugContext(ctx, "bridge: call refused", "method", method, "err", err)
		return Status(err).Err()
	}
	svc, err := in.director(ctx, method)
	if err != nil {
		in.log.DebugContext(ctx, "bridge: director failed", "method", method, "err", err)
		return Status(err).Err()
	}
	if !in.borrowed {
		defer svc.Release()
	}
	c := &ingressCall{in: in, ss: ss, ctx: ctx, method: method, md: md}
	c.obox.init(queueBytes)
	c.ob = &c.obox
	c.idle = c.idleW.init(in.idle)
	defer c.finish()
	if in.onCall != nil {
		in.onCall(c)
	}
	if in.kinds.Kind(method) == KindUnary {
		req, closed, err := c.recvUnary()
		if err != nil {
			return err
		}
		if req != nil {
			in.unaryCalls.Add(1)
			in.knownUnaryCalls.Add(1)
			return c.unary(svc, req)
		}
		// Not a request a unary call carries: what was read waits in the
		// outbox, and the reader goes on from there if there is more.
		in.streamCalls.Add(1)
		if !closed {
			go c.pump()
		}
		c.idle.arm(c.idled)
		return c.stream(svc)
	}
	go c.pump()
	c.yieldToPump()
	if req := c.unaryRequest(); req != nil {
		in.unaryCalls.Add(1)
		return c.unary(svc, req)
	}
	in.streamCalls.Add(1)
	c.idle.arm(c.idled)
	return c.stream(svc)
}

// final is how a call ended.
type final struct {
	st       *status.Status
	trailers metadata.MD
	lost     bool // the response Sink was dropped: the call's own error may tell more
}

// ingressCall is one call through the ingress.
//
// Locking: mu guards finished, ended, fin, endedCh and stopSend. The down
// Sink (one call at a time) checks finished before using ss; the handler
// sets it as it returns. ss is not used after that, except by a SendMsg
// already blocked in flow control, which gRPC ends when the handler
// returns.
type ingressCall struct {
	in      *Ingress
	ss      grpc.ServerStream
	ctx     context.Context
	method  string
	md      metadata.MD // the request's (requestMetadata: read-only)
	ob      *outbox     // client messages, read by pump: &obox
	obox    outbox
	idle    *idleWatch // &idleW with IngressConfig.StreamIdleTimeout (armed on a streaming path); nil: none
	idleW   idleWatch
	upStats sendStats // of the request stream's sender
	// The fast path's frames live in the call, saving an allocation each
	// (a frame given to gRPC escapes anyway): reqF and extraF are
	// recvUnary's (the request; a second message or the half-close),
	// respF is reply's (the response). Each is used by one goroutine, once.
	reqF, extraF, respF frame
	// pumpF is pump's frame, each message's in turn (the outbox keeps a
	// copy of it): one frame per call rather than one per message.
	pumpF frame

	mu       sync.Mutex
	finished bool
	ended    bool  // deliver was called
	fin      final // deliver's first report
	// endedCh is closed once deliver was called. It is made by the first
	// of deliver and endedChan (the shared closedChan if deliver comes
	// first): a unary call whose reply comes in its answer never waits,
	// and makes none.
	endedCh  chan struct{}
	stopSend context.CancelFunc // called by deliver: ends the request direction's sending
}

// closedChan is a closed channel: the endedCh of a call that ended before
// anyone waited for it.
var closedChan = func() chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}()

// errCallDone is returned to a peer that sends on a call that has ended.
var errCallDone = errors.New("bridge: call has ended")

// pump reads the client's messages into the outbox until the client
// half-closes or the call ends.
func (c *ingressCall) pump() {
	f := &c.pumpF
	for {
		*f = frame{}
		err := c.ss.RecvMsg(f)
		if err == io.EOF {
			c.ob.put(c.ctx, event{kind: evEnd})
			return
		}
		if err != nil {
			c.deliver(final{st: Status(err)})
			return
		}
		c.idle.touch()
		if !c.ob.put(c.ctx, event{kind: evMsg, msg: *f}) {
			return
		}
	}
}

// yieldToPump gives the pump the turns it needs to read a unary request
// the client has already sent (one message, then the half-close): it
// yields while the pump makes progress towards one, and stops as soon as
// a turn brought nothing new or what came cannot be one. That is at most
// three yields, never a wait on a timer or on the client. It returns how
// many it made. (One yield, as before, left about 3% of a sidecar pair's
// unary calls on the stream path; with it about 1.5% take it.)
func (c *ingressCall) yieldToPump() (yields int) {
	for seen := -1; ; {
		runtime.Gosched()
		yields++
		n, sh := c.ob.peek()
		if n == seen || (n > 0 && sh != shapeMaybe) {
			return yields
		}
		seen = n
	}
}

// unaryRequest returns the request if the client has sent one message and
// half-closed, and it fits a unary call; otherwise it leaves the outbox as it
// was and returns nil.
func (c *ingressCall) unaryRequest() *frame {
	evs := c.ob.poll()
	if len(evs) == 2 && evs[0].kind == evMsg && evs[1].kind == evEnd && evs[0].size() <= inlineMax {
		return &evs[0].msg
	}
	c.ob.unget(evs)
	return nil
}

// unary makes the call with GrpcService.unary. On an engine import it is
// the engine's own blocking call (engine.CallDirect), which skips
// go-capnp's Promise, Answer and Future; any other capability gets the
// generated client's call, which CallDirect falls back to.
func (c *ingressCall) unary(svc captp.GrpcService, req *frame) error {
	defer req.free()
	hint := 0
	if n := req.data.Len(); n >= sizeHintMin {
		// The params are the request, the metadata and a few words: the
		// engine builds them in one buffer (the function below may run
		// twice, see engine.WithSizeHint).
		hint = n + len(c.method) + metadataSize(c.md, keepRequest) + 512
	}
	out, err := engine.CallDirect(c.ctx, capnp.Client(svc), serviceMethods[0].Method, unaryParamsSize, func(s capnp.Struct) error {
		p := captp.GrpcService_unary_Params(s)
		h, err := p.NewCall()
		if err != nil {
			return err
		}
		if err := writeCallHead(h, c.ctx, c.method, c.md); err != nil {
			return err
		}
		d, err := newData(p.Segment(), req.data)
		if err != nil {
			return err
		}
		return capnp.Struct(p).SetPtr(1, d.ToPtr()) // request @1
	}, hint)
	if err != nil {
		return c.fail(err)
	}
	defer out.Release()
	if out.Direct() {
		c.in.directCalls.Add(1)
	}
	res := captp.GrpcService_unary_Results(out.Struct())
	if res.HasRest() {
		// The response streams: attach a Sink to the call, and hold the
		// call until the end (releasing it cancels).
		rest := res.Rest().AddRef()
		defer rest.Release()
		c.idle.arm(c.idled)
		af, arelease := rest.Attach(c.ctx, func(p captp.Call_attach_Params) error {
			return p.SetDown(newSink(c, c.in.max, c.in.maxMD, c.in.pool))
		})
		defer arelease()
		return c.wait(af.Future)
	}
	r, err := res.Reply()
	if err != nil {
		return c.fail(err)
	}
	if !r.HasStatus() { // an OK reply has one too (writeReply)
		return c.fail(fmt.Errorf("%w: no status", ErrBadReply))
	}
	return c.reply(r)
}

// stream makes the call with GrpcService.open: the client's messages go up
// a Sink as they come, the response comes down another.
func (c *ingressCall) stream(svc captp.GrpcService) error {
	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	// The request direction is sent from this goroutine (no goroutine of
	// its own per stream); the call's end, reported by deliver, stops it
	// (and only it: open's own answer still tells why the call ended).
	sendCtx, stopSend := context.WithCancel(ctx)
	defer stopSend()
	c.onEnd(stopSend)
	// The down Sink is made only as the parameters take it: a call on a
	// broken capability (its connection gone) never builds them, and a Sink
	// made earlier would never be shut down.
	fut, release := svc.Open(ctx, func(p captp.GrpcService_open_Params) error {
		h, err := p.NewCall()
		if err != nil {
			return err
		}
		if err := writeCallHead(h, c.ctx, c.method, c.md); err != nil {
			return err
		}
		return p.SetDown(newSink(c, c.in.max, c.in.maxMD, c.in.pool))
	})
	// up is a promise on open's results: it lives as long as they do, so
	// they are released last (release waits for open to return, #534).
	defer release()
	up := fut.Up()
	defer up.Release()
	// Until open answers, a failure of it (a broken capability builds no
	// down Sink whose loss would tell) must stop the sender too. The
	// egress answers open as soon as the backend stream exists, so this
	// watcher lives about one round trip, not the stream's life; it ends
	// before open's results are released.
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case <-fut.Done():
			if _, err := fut.Struct(); err != nil {
				stopSend()
			}
		case <-sendCtx.Done():
		}
	}()
	s := sender{sink: up, ob: c.ob, stats: &c.upStats}
	if err := s.run(sendCtx); err != nil && sendCtx.Err() == nil {
		// A failed send means the far side ended the call or is gone;
		// either way the final status comes down (or the Sink is
		// dropped), and it says more than the send error.
		c.in.log.DebugContext(c.ctx, "bridge: request stream failed", "method", c.method, "err", err)
	}
	err := c.wait(fut.Future)
	cancel()
	<-watched
	c.ob.stop()
	return err
}

// wait waits for the end of the call and returns its status. opened, if not
// nil, is the capnp call that gave the far side our down Sink (open or
// attach), whose failure ends the call.
func (c *ingressCall) wait(opened *capnp.Future) error {
	var openDone <-chan struct{}
	if opened != nil {
		openDone = opened.Done()
	}
	ended := c.endedChan()
	for {
		select {
		case <-ended:
			f := c.report()
			if f.lost && openDone != nil {
				// The peer dropped down before opened returned (an
				// exception releases the parameters): its error, if
				// any, says why.
				select {
				case <-openDone:
					if _, err := opened.Struct(); err != nil {
						return c.fail(err)
					}
				case <-c.ctx.Done():
				}
			}
			if len(f.trailers) > 0 {
				c.ss.SetTrailer(f.trailers)
			}
			return f.st.Err()
		case <-openDone:
			openDone = nil
			if _, err := opened.Struct(); err != nil {
				return c.fail(err)
			}
		case <-c.ctx.Done():
			return Status(c.ctx.Err()).Err()
		}
	}
}

// fail logs err and returns its status, telling OnCapTPFailure when err
// came from CapTP.
func (c *ingressCall) fail(err error) error {
	c.capTPFailure(err)
	st := Status(err)
	c.in.log.DebugContext(c.ctx, "bridge: call failed", "method", c.method, "code", st.Code(), "err", err)
	return st.Err()
}

// deliver records how the call ended; the first report wins.
func (c *ingressCall) deliver(f final) {
	c.mu.Lock()
	if !c.ended {
		c.ended = true
		c.fin = f
		if c.endedCh == nil {
			c.endedCh = closedChan
		} else {
			close(c.endedCh)
		}
	}
	stop := c.stopSend
	c.mu.Unlock()
	if stop != nil {
		stop() // the request direction has nothing left to do
	}
}

// endedChan returns a channel closed once deliver was called.
func (c *ingressCall) endedChan() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.endedCh == nil {
		c.endedCh = make(chan struct{})
	}
	return c.endedCh
}

// report returns how the call ended: deliver's first report (once endedChan
// is closed).
func (c *ingressCall) report() final {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fin
}

// onEnd makes deliver call stop; if the call has already ended, at once.
func (c *ingressCall) onEnd(stop context.CancelFunc) {
	c.mu.Lock()
	c.stopSend = stop
	ended := c.ended
	c.mu.Unlock()
	if ended {
		stop()
	}
}

// finish marks the call ended: the down Sink no longer touches ss.
func (c *ingressCall) finish() {
	c.idle.stop()
	c.mu.Lock()
	c.finished = true
	c.mu.Unlock()
	c.ob.stop()
}

// idled ends c, a stream idle for the ingress's StreamIdleTimeout (a call
// already over ignores it).
func (c *ingressCall) idled() {
	c.in.log.DebugContext(c.ctx, "bridge: idle stream ended", "method", c.method, "idle", c.in.idle.String())
	c.deliver(final{st: idleStatus(c.in.idle)})
}

// header implements target.
func (c *ingressCall) header(md metadata.MD) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.finished {
		return errCallDone
	}
	c.idle.touch()
	return c.ss.SendHeader(md)
}

// message implements target. It does not hold mu while SendMsg blocks on
// a slow client: if the call ends meanwhile, the handler returns, gRPC
// cancels the stream and SendMsg returns.
func (c *ingressCall) message(f *frame) error {
	c.mu.Lock()
	finished := c.finished
	c.mu.Unlock()
	if finished {
		f.free()
		return errCallDone
	}
	c.idle.touch()
	if err := c.ss.SendMsg(f); err != nil {
		f.free()
		return err
	}
	c.idle.touch() // a slow client's SendMsg may have blocked for long
	return nil
}

// end implements target.
func (c *ingressCall) end(st *status.Status, trailers metadata.MD) {
	if st == nil {
		st = status.New(codes.Internal, "bridge: response stream closed without a status")
	}
	c.deliver(final{st: st, trailers: trailers})
}

// lost implements target.
func (c *ingressCall) lost(err error) {
	c.capTPFailure(err)
	c.deliver(final{st: Status(err), lost: true})
}

// capTPFailure calls OnCapTPFailure when err came from CapTP and may mean
// the capability broke: a capnp exception (the capability's, or its
// connection's) or a lost stream. Not when the capability is sound and
// only refused this call: Overloaded (a limit), Unimplemented, or a
// narrowed ref's caveat; nor when the client's own call ended first (its
// cancel or deadline). A status the far app returned arrives as a Status
// struct, never as an exception, and a local client's error is neither.
func (c *ingressCall) capTPFailure(err error) {
	if c.in.onCapTP == nil || c.ctx.Err() != nil {
		// The client's call ended (cancelled, or past its deadline): the
		// CapTP call failed because of that, not because of CapTP.
		return
	}
	var e *exc.Exception
	switch {
	case errors.Is(err, ErrStreamLost):
	case !errors.As(err, &e), e.Type == exc.Overloaded, e.Type == exc.Unimplemented,
		strings.Contains(err.Error(), RefusedByCaveat):
		return
	}
	c.in.onCapTP(c.ctx, err)
}

// newData allocates a Data of bs's length in seg and copies bs into it: the
// one copy from gRPC memory to capnp memory.
func newData(seg *capnp.Segment, bs mem.BufferSlice) (capnp.UInt8List, error) {
	d, err := capnp.NewUInt8List(seg, int32(bs.Len()))
	if err != nil {
		return d, err
	}
	bs.CopyTo(d.ToPtr().Data())
	return d, nil
}
