package bridge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"capnproto.org/go/capnp/v3/exc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/vatcar/vatcar/proto/captp"
	"github.com/vatcar/vatcar/vat/engine"
)

// egress is the GrpcService server that forwards calls to a gRPC client
// connection. Its calls run concurrently, each on a worker of its own
// (serviceHook, workers); admission control bounds how many.
type egress struct {
	conn  grpc.ClientConnInterface
	max   int
	maxMD int // metadata limit
	limit int64
	opts  []grpc.CallOption // the config's
	onMsg func(bool, int)   // EgressConfig.OnMessage; nil: none
	plain []grpc.CallOption // every call's options for the default content-subtype
	// lastSub is the options of the content-subtype a call last had, if
	// not the default (read-only once stored).
	lastSub atomic.Pointer[subtypeOptions]
	callers callerCache     // the metadata of recent callers (callerValues)
	base    context.Context // EgressConfig.Context; nil: none
	kinds   Kinds
	caller  func(context.Context) (Caller, bool) // EgressConfig.Caller
	log     *slog.Logger
	idle    time.Duration // EgressConfig.StreamIdleTimeout; zero: off
	onOver  func(bool)    // EgressConfig.OnOverloaded; nil: none
	active  atomic.Int64  // calls admitted and not done, of every caller
	pool    *workers      // runs the calls' handlers; closed by serviceHook.Shutdown

	// Per-caller admission (EgressConfig.CallerKey).
	callerKey func(context.Context) any // nil: one caller, limit bounds active
	slots     *Slots                    // with callerKey: limit per caller, MaxTotalCalls shared

	wholeReplies, streamedReplies atomic.Int64 // unary calls by how they were answered
	knownUnaryCalls               atomic.Int64 // unary calls that took the known-unary fast path
}

// NewEgress returns a GrpcService capability that forwards every call to
// cfg.Conn with the raw codec, for a valid config. The caller owns the
// returned client: release it when done (calls in progress go on). It may
// be handed to any number of connections; MaxConcurrentCalls applies to all
// of them together, so make one egress per connection for a per-connection
// limit.
func NewEgress(cfg EgressConfig) (captp.GrpcService, error) {
	e, err := newEgress(cfg)
	if err != nil {
		return captp.GrpcService{}, err
	}
	return newService(e), nil
}

func newEgress(cfg EgressConfig) (*egress, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("new egress: %w", err)
	}
	limit := cfg.MaxConcurrentCalls
	if limit == 0 {
		limit = DefaultMaxConcurrentCalls
	}
	e := &egress{
		conn:   cfg.Conn,
		max:    maxMessageSize(cfg.MaxMessageSize),
		maxMD:  maxMetadataSize(cfg.MaxMetadataSize),
		limit:  int64(limit),
		opts:   cfg.CallOptions,
		base:   cfg.Context,
		kinds:  cfg.Kinds,
		log:    logger(cfg.Logger),
		caller: cfg.Caller,
		idle:   cfg.StreamIdleTimeout,
		onOver: cfg.OnOverloaded,
		onMsg:  cfg.OnMessage,
		pool:   newWorkers(),
	}
	if cfg.CallerKey != nil {
		e.callerKey = cfg.CallerKey
		total := cfg.MaxTotalCalls
		if total == 0 {
			total = limit * DefaultTotalCallsFactor
		}
		e.slots = NewSlots(limit, total)
	}
	e.plain = e.callOptions("")
	return e, nil
}

// callError is what a GrpcService method returns for err, which ended the
// call before it started: metadata over the limit as an Overloaded
// exception (capnp sends an exception's type only when it is the error
// itself, not wrapped), which the caller sees as RESOURCE_EXHAUSTED; any
// other error wrapped with the method's name.
func callError(method string, err error) error {
	if errors.Is(err, ErrMetadataTooLarge) {
		return exc.New(exc.Overloaded, "", method+": "+err.Error())
	}
	return fmt.Errorf("%s: %w", method, err)
}

// slot is an admitted call's place in the egress's counts.
type slot struct {
	caller any // the call's caller key; nil without EgressConfig.CallerKey
}

// admit takes a call slot for a call arriving with ctx, or answers
// Overloaded. Without a CallerKey, limit bounds all calls together. With
// one, Slots count them: limit per caller, MaxTotalCalls shared fairly.
func (e *egress) admit(ctx context.Context) (slot, error) {
	if e.callerKey == nil {
		if e.active.Add(1) > e.limit {
			e.active.Add(-1)
			e.overloaded(true)
			return slot{}, exc.New(exc.Overloaded, "bridge", fmt.Sprintf("%v (%d)", ErrOverloaded, e.limit))
		}
		return slot{}, nil
	}
	key := e.callerKey(ctx)
	if err := e.slots.Take(key); err != nil {
		var se *SlotsError
		if errors.As(err, &se) && !se.PerCaller {
			e.overloaded(false)
			return slot{}, exc.New(exc.Overloaded, "", fmt.Sprintf("%v on this export (%d, %d callers)", ErrOverloaded, se.Limit, se.Callers))
		}
		e.overloaded(true)
		return slot{}, exc.New(exc.Overloaded, "", fmt.Sprintf("%v on this connection (%d)", ErrOverloaded, e.limit))
	}
	e.active.Add(1)
	return slot{caller: key}, nil
}

// overloaded tells EgressConfig.OnOverloaded, if set, of a refusal.
func (e *egress) overloaded(perCaller bool) {
	if e.onOver != nil {
		e.onOver(perCaller)
	}
}

// release gives back a slot taken by admit.
func (e *egress) release(s slot) {
	if e.callerKey != nil {
		e.slots.Give(s.caller)
	}
	e.active.Add(-1)
}

// streamDesc lets a backend call be of any kind.
var streamDesc = grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

// egressCall is one call through the egress.
type egressCall struct {
	e      *egress
	slot   slot // given back by done
	head   callHead
	ctx    context.Context // the backend call's, with its deadline
	cancel context.CancelFunc
	bs     grpc.ClientStream
	ob     *outbox // backend events, read by pump: &obox
	obox   outbox
	idle   *idleWatch // streams only, with EgressConfig.StreamIdleTimeout; nil: none
	// The backend's response is received into rf and a unary request
	// sent from sf: frames in the call save an allocation each (a frame
	// given to gRPC escapes). rf is the reader's (readUnary, then pump),
	// sf the unary handler's.
	rf, sf frame

	mu     sync.Mutex
	failed *status.Status // set by fail: replaces the backend's status
	over   bool           // set by done
	// gone is set by abandon. endLife ends the context respond sends the
	// response under (its own, so the backend's deadline still lets the
	// final status go down); nil until respond made it. A unary call
	// answered whole never needs one.
	gone    bool
	endLife context.CancelFunc
}

// start opens the backend stream and starts reading its response, watching
// it for idleness (StreamIdleTimeout). The call's context is newCall's.
func (e *egress) start(parent context.Context, h captp.CallHead, sl slot) (*egressCall, error) {
	c, err := e.newCall(parent, h, sl)
	if err != nil {
		return nil, err
	}
	c.idle = watchIdle(e.idle, c.idled) // before the pump reads it
	c.open()
	return c, nil
}

// idled ends c, a stream idle for the egress's StreamIdleTimeout, unless
// it is over already.
func (c *egressCall) idled() {
	c.mu.Lock()
	over := c.over
	c.mu.Unlock()
	if over {
		return
	}
	c.e.log.Debug("bridge: idle stream ended", "method", c.head.method, "idle", c.e.idle.String())
	c.fail(idleStatus(c.e.idle))
}

// open opens the backend stream and starts reading its response. A call
// that could not start has its status in the outbox.
func (c *egressCall) open() {
	bs, err := c.e.conn.NewStream(c.ctx, &streamDesc, c.head.method, c.callOptions()...)
	if err != nil {
		c.ob.put(context.Background(), event{kind: evEnd, st: Status(err)})
		return
	}
	c.bs = bs
	go c.pump()
}

// newCall decodes a call's head and makes the call, with the context its
// backend call runs under: the head's metadata and deadline, under the
// egress's base context (EgressConfig.Context), or without one under
// parent's values (not its cancellation).
func (e *egress) newCall(parent context.Context, h captp.CallHead, sl slot) (*egressCall, error) {
	// Most calls' metadata fits here, off the heap: gRPC copies it.
	var buf [16]string
	head, pairs, err := readCallHead(h, e.maxMD, buf[:0])
	if err != nil {
		return nil, err
	}
	var who Caller
	var callerMD *callerMD
	if e.caller != nil {
		var ok bool
		if who, ok = e.caller(parent); ok {
			if who.Check != nil {
				if err := who.Check(head.method); err != nil {
					return nil, err
				}
			}
			callerMD = e.callerValues(who)
		}
	}
	// The call's lifetime is its own (deadline, cancellation by the
	// caller), bounded by the egress's base context if any; values come
	// from parent only without one.
	ctx := e.base
	if ctx == nil {
		ctx = context.WithoutCancel(parent)
	}
	var cancel context.CancelFunc
	if head.timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, head.timeout)
	} else {
		ctx, cancel = context.WithCancel(ctx)
	}
	ctx = outgoing(ctx, pairs, callerMD)
	c := &egressCall{e: e, slot: sl, head: head, ctx: ctx, cancel: cancel}
	c.obox.init(queueBytes)
	c.ob = &c.obox
	if !who.Expires.IsZero() {
		// A call (an open stream) still running when its ref expires ends.
		t := time.AfterFunc(time.Until(who.Expires), func() {
			c.fail(status.New(codes.PermissionDenied, "vatcar: "+RefusedByCaveat+": expiry caveat: the ref expired during the call"))
		})
		context.AfterFunc(ctx, func() { t.Stop() })
	}
	return c, nil
}

// outgoing returns ctx with the backend call's metadata: the request's
// pairs (readCallHead), then the caller's keys, if any (who: nil for
// none). It replaces any outgoing metadata ctx has. gRPC keeps what it is
// given as it is, without a map: pairs are copied once, and the caller's
// keys alone are a map shared by the caller's calls.
func outgoing(ctx context.Context, pairs []string, who *callerMD) context.Context {
	if _, ok := metadata.FromOutgoingContext(ctx); ok {
		ctx = metadata.NewOutgoingContext(ctx, nil) // none but the call's
	}
	switch {
	case len(pairs) > 0:
		if who != nil {
			pairs = append(pairs, who.pairs...)
		}
		return metadata.AppendToOutgoingContext(ctx, pairs...)
	case who != nil && who.md != nil:
		return metadata.NewOutgoingContext(ctx, who.md)
	}
	return ctx
}

// callerMD is the metadata naming one caller, shared by its calls
// (read-only: gRPC only reads metadata it sends).
type callerMD struct {
	peer, ref string
	pairs     []string    // vatcar-peer and vatcar-ref, each if not empty
	md        metadata.MD // pairs as metadata; nil when pairs is empty
}

// callerCache keeps the metadata of the last few callers of an egress (an
// export's calls mostly come from a few connections, interleaved). It is
// safe for concurrent use: entries are read-only once stored, and a
// caller not found is made again and stored over the oldest entry.
type callerCache struct {
	recent [8]atomic.Pointer[callerMD]
	next   atomic.Uint32 // the entry the next new caller replaces, mod len(recent)
}

// callerValues returns the vatcar-peer and vatcar-ref metadata for who, a
// recent caller's or new.
func (e *egress) callerValues(who Caller) *callerMD {
	cache := &e.callers
	for i := range cache.recent {
		if m := cache.recent[i].Load(); m != nil && m.peer == who.Peer && m.ref == who.Ref {
			return m
		}
	}
	m := &callerMD{peer: who.Peer, ref: who.Ref, pairs: make([]string, 0, 4)}
	if who.Peer != "" {
		m.pairs = append(m.pairs, MetadataPeer, who.Peer)
	}
	if who.Ref != "" {
		m.pairs = append(m.pairs, MetadataRef, who.Ref)
	}
	if len(m.pairs) > 0 {
		m.md = metadata.Pairs(m.pairs...)
	}
	cache.recent[(cache.next.Add(1)-1)%uint32(len(cache.recent))].Store(m)
	return m
}

// callOptions returns the options of the call's backend call: the raw codec
// under the call's content-subtype, the message sizes, then the config's.
func (c *egressCall) callOptions() []grpc.CallOption {
	if c.head.subtype == "" {
		return c.e.plain
	}
	// Most clients of an egress use one content-subtype ("proto", as
	// grpc-go's clients with a named codec send): the options of the last
	// one are kept, saving five allocations per call.
	if l := c.e.lastSub.Load(); l != nil && l.subtype == c.head.subtype {
		return l.opts
	}
	l := &subtypeOptions{subtype: c.head.subtype, opts: c.e.callOptions(c.head.subtype)}
	c.e.lastSub.Store(l)
	return l.opts
}

// subtypeOptions are the call options for one content-subtype.
type subtypeOptions struct {
	subtype string
	opts    []grpc.CallOption
}

// callOptions builds the options of a backend call with the given
// content-subtype. The slice is clipped: e.plain is shared by concurrent
// calls, and an append further down (an interceptor's) must copy it.
func (e *egress) callOptions(subtype string) []grpc.CallOption {
	return slices.Clip(append([]grpc.CallOption{
		grpc.ForceCodecV2(rawCodec{name: subtype, onMessage: e.onMsg}),
		grpc.MaxCallRecvMsgSize(e.max),
		grpc.MaxCallSendMsgSize(e.max),
	}, e.opts...))
}

// pump reads the backend's response into the outbox: headers as soon as
// they arrive, then messages, then status and trailers. It stops reading
// when the outbox stops (abandon, done).
func (c *egressCall) pump() {
	if md, _ := c.bs.Header(); md != nil {
		if st := c.responseMetadata("response headers", md); st != nil {
			c.fail(st) // the status that pumpMessages sends
		} else if !c.ob.put(context.Background(), event{kind: evHeaders, md: md}) {
			c.drain()
			return
		}
	}
	c.pumpMessages()
}

// pumpMessages reads the backend's messages, status and trailers into the
// outbox.
func (c *egressCall) pumpMessages() {
	for {
		err := c.bs.RecvMsg(&c.rf)
		if err != nil {
			st := statusOK // a clean io.EOF, which Status would not map
			if err != io.EOF {
				st = Status(err)
			}
			trailers := c.bs.Trailer()
			if bad := c.responseMetadata("trailers", trailers); bad != nil {
				st, trailers = bad, nil
			}
			c.mu.Lock()
			if c.failed != nil {
				st = c.failed
			}
			c.mu.Unlock()
			c.ob.put(context.Background(), event{kind: evEnd, st: st, md: trailers})
			return
		}
		f := c.rf
		c.rf = frame{}
		c.idle.touch()
		if !c.ob.put(context.Background(), event{kind: evMsg, msg: f}) {
			c.drain()
			return
		}
	}
}

// responseMetadata returns the status that replaces the backend's when md,
// its response headers or trailers, is over the metadata limit; nil when it
// fits.
func (c *egressCall) responseMetadata(what string, md metadata.MD) *status.Status {
	err := checkMetadata(what, md, keepForward, c.e.maxMD)
	if err == nil {
		return nil
	}
	c.e.log.Debug("bridge: backend metadata refused", "method", c.head.method, "err", err)
	return Status(err)
}

// drain cancels the backend call and reads it to its end, which releases
// gRPC's resources.
func (c *egressCall) drain() {
	c.cancel()
	for {
		if err := c.bs.RecvMsg(&c.rf); err != nil {
			return
		}
		c.rf.free()
	}
}

// fail cancels the backend call and makes st its final status.
func (c *egressCall) fail(st *status.Status) {
	c.mu.Lock()
	if c.failed == nil {
		c.failed = st
	}
	c.mu.Unlock()
	c.cancel()
}

// done releases the call's slot and context. It runs once the final status
// was handed on (or nobody will take it); later calls do nothing.
func (c *egressCall) done() {
	c.mu.Lock()
	over := c.over
	c.over = true
	c.mu.Unlock()
	if over {
		return
	}
	c.cancel()
	c.abandon()
	c.idle.stop()
	c.e.release(c.slot)
}

// unary serves GrpcService.unary.
func (e *egress) unary(ctx context.Context, call unaryCall) error {
	sl, err := e.admit(ctx)
	if err != nil {
		return err
	}
	args := call.Args()
	h, err := args.Call()
	if err != nil {
		e.release(sl)
		return fmt.Errorf("unary: %w", err)
	}
	c, err := e.newCall(ctx, h, sl)
	if err != nil {
		e.release(sl)
		return callError("unary", err)
	}
	if e.kinds.Kind(c.head.method) == KindUnary {
		return e.unaryKnown(ctx, call, c)
	}
	c.open()
	// While the handler runs, the capnp call's cancellation is the call's.
	stop := engine.AfterCancel(ctx, c.cancel)
	if c.bs != nil {
		req, err := args.Request()
		if err != nil {
			stop.Stop()
			c.done()
			return fmt.Errorf("unary: %w", err)
		}
		c.sf.single(mem.Copy(req, &bufferPool))
		if err := c.bs.SendMsg(&c.sf); err != nil {
			c.sf.free() // io.EOF: the status comes from RecvMsg
		}
		_ = c.bs.CloseSend()
	}
	evs, whole := c.collect(ctx)
	if !stop.Stop() || ctx.Err() != nil {
		// The caller cancelled (Finish) while the response was awaited.
		freeEvents(evs)
		c.done()
		return fmt.Errorf("unary: %w", ctx.Err())
	}
	if whole {
		return e.replyWhole(call, c, evs)
	}
	// The response streams: it waits in the outbox for the Sink the caller
	// attaches.
	c.ob.unget(evs)
	return e.replyRest(call, c)
}

// replyWhole answers a unary call with its whole response, then ends the
// call.
func (e *egress) replyWhole(call unaryCall, c *egressCall, evs []event) error {
	e.wholeReplies.Add(1)
	defer c.done()
	defer freeEvents(evs)
	res, err := call.AllocResults()
	if err != nil {
		return fmt.Errorf("unary: %w", err)
	}
	r, err := res.NewReply()
	if err != nil {
		return fmt.Errorf("unary: %w", err)
	}
	return writeReply(r, evs)
}

// replyRest answers a unary call with the call itself: the caller attaches
// a Sink, and the response, waiting in the outbox (bounded, as always),
// goes down it.
func (e *egress) replyRest(call unaryCall, c *egressCall) error {
	e.streamedReplies.Add(1)
	res, err := call.AllocResults()
	if err != nil {
		c.done()
		return fmt.Errorf("unary: %w", err)
	}
	if err := res.SetRest(captp.Call_ServerToClient(&callServer{c: c})); err != nil {
		c.done()
		return fmt.Errorf("unary: %w", err)
	}
	return nil
}

// callServer is the Call capability of a unary call whose response
// streams. Its calls run one at a time.
type callServer struct {
	c        *egressCall
	attached bool
}

// Attach implements captp.Call_Server: the response starts down the Sink.
func (s *callServer) Attach(_ context.Context, call captp.Call_attach) error {
	args := call.Args()
	if s.attached {
		return fmt.Errorf("attach: %w", ErrAttached)
	}
	if !args.HasDown() {
		return fmt.Errorf("attach: %w", ErrNoDownSink)
	}
	s.attached = true
	s.c.respond(args.Down().AddRef())
	return nil
}

// Shutdown implements server.Shutdowner: the caller released the call.
// Before the response ended that cancels it (see egressCall.lost); if no
// Sink was ever attached, nothing else will end the call.
func (s *callServer) Shutdown() {
	s.c.lost(ErrStreamLost)
	if !s.attached {
		s.c.done()
	}
}

// open serves GrpcService.open.
func (e *egress) open(ctx context.Context, call openCall) error {
	sl, err := e.admit(ctx)
	if err != nil {
		return err
	}
	args := call.Args()
	if !args.HasDown() {
		e.release(sl)
		return fmt.Errorf("open: %w", ErrNoDownSink)
	}
	h, err := args.Call()
	if err != nil {
		e.release(sl)
		return fmt.Errorf("open: %w", err)
	}
	c, err := e.start(ctx, h, sl)
	if err != nil {
		e.release(sl)
		return callError("open", err)
	}
	res, err := call.AllocResults()
	if err != nil {
		c.done()
		return fmt.Errorf("open: %w", err)
	}
	if err := res.SetUp(newSink(c, e.max, e.maxMD, e.pool)); err != nil {
		c.done()
		return fmt.Errorf("open: %w", err)
	}
	c.respond(args.Down().AddRef())
	return nil
}

// abandon gives the response up: nobody will take it (the caller released
// up or its Call, or the response could not be sent). The outbox stops,
// so the backend's reader drains the call, and the sender's calls end.
func (c *egressCall) abandon() {
	c.mu.Lock()
	c.gone = true
	end := c.endLife
	c.mu.Unlock()
	if end != nil {
		end()
	}
	c.ob.stop()
}

// respond sends the response down on a goroutine, then ends the call.
func (c *egressCall) respond(down captp.Sink) {
	life, end := context.WithCancel(context.Background())
	c.mu.Lock()
	c.endLife = end
	gone := c.gone
	c.mu.Unlock()
	if gone {
		end()
	}
	go func() {
		defer down.Release()
		defer c.done()
		s := sender{sink: down, ob: c.ob}
		if err := s.run(life); err != nil && life.Err() == nil {
			c.e.log.Debug("bridge: response stream failed", "method", c.head.method, "err", err)
			c.fail(Status(err))
			c.abandon()
		}
	}()
}

// header implements target: the request direction carries no headers.
func (c *egressCall) header(metadata.MD) error { return nil }

// message implements target: a request message goes to the backend. An
// error there ends the backend call, whose status comes down as usual.
func (c *egressCall) message(f *frame) error {
	c.idle.touch()
	if c.bs == nil {
		f.free()
		return nil
	}
	if err := c.bs.SendMsg(f); err != nil {
		f.free()
	}
	return nil
}

// end implements target: the client half-closed.
func (c *egressCall) end(*status.Status, metadata.MD) {
	if c.bs != nil {
		_ = c.bs.CloseSend()
	}
}

// lost implements target: the caller released up (or the Call) before the
// call ended (it was cancelled, or its connection is gone: nobody is
// listening any more), or a request was too large (the status still goes
// down).
func (c *egressCall) lost(err error) {
	c.mu.Lock()
	over := c.over
	c.mu.Unlock()
	if over {
		return
	}
	c.fail(Status(err))
	if errors.Is(err, ErrStreamLost) {
		c.abandon()
	}
}
