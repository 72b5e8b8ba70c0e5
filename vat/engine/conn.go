package engine

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// Codec moves whole capnp messages over a byte stream. The vat's write
// behind codec implements it; Decode is called by one goroutine, Encode by
// many (it must keep their order), Close ends both. Encode must not keep
// the message after it returns: the Conn releases it then, or builds its
// next call in it.
type Codec interface {
	Encode(*capnp.Message) error
	Decode() (*capnp.Message, error)
	Close() error
}

// Options configure a Conn. The zero value serves no bootstrap capability
// and refuses object-id bootstraps.
type Options struct {
	// Bootstrap is the capability a Bootstrap without an object id gets.
	// The Conn takes it over and releases it at shutdown.
	Bootstrap capnp.Client
	// Restore answers a Bootstrap with an object id (the id's Text
	// bytes). It runs on a goroutine of its own and returns a new
	// reference. Nil: such a bootstrap fails with NoRestorer.
	Restore func(ctx context.Context, id []byte) (capnp.Client, error)
	// NoRestorer is the exception text when Restore is nil.
	NoRestorer string
	// BaseContext gives the contexts of inbound calls their values and
	// deadline; they are cancelled by Finish, at shutdown, and when it
	// ends. Nil: context.Background().
	BaseContext context.Context
	// Logger gets protocol errors at debug level; nil discards them.
	Logger *slog.Logger
	// MaxImports and MaxExports bound the peer's capabilities held here and
	// this side's held by the peer (0: DefaultMaxCaps; negative: no
	// bound). Over either, the call, return or restore that would cross it
	// fails with an Overloaded exception; the connection lives.
	MaxImports, MaxExports int
	// MaxAnswers bounds the peer's calls (Bootstraps included) that this
	// side holds an answer for until the peer's Finish, or until a
	// noFinishNeeded Return leaves (it is not counted while its send
	// waits: bound the calls running by other means) (0:
	// DefaultMaxAnswers; negative: no bound). A call over it is answered
	// at once with an Overloaded exception; a peer holding twice as many
	// (refused ones included) has its connection closed.
	MaxAnswers int
	// MaxRestores bounds the object-id Bootstraps whose Restore runs, or
	// whose Return waits to be queued, at once (0: DefaultMaxRestores;
	// negative: no bound). One more is refused with an Overloaded
	// exception from the receive loop, which then waits, as any send does,
	// while the peer reads nothing: a peer that never reads cannot start
	// restores without end.
	MaxRestores int
	// OnLimit, if set, is told of each call, question or connection that
	// failed for a limit: one of the Limit constants. It must not block.
	OnLimit func(reason string)
}

// DefaultMaxCaps is the default of Options.MaxImports and MaxExports.
const DefaultMaxCaps = 1 << 16

func capLimit(n int) int {
	switch {
	case n == 0:
		return DefaultMaxCaps
	case n < 0:
		return int(^uint(0) >> 1)
	}
	return n
}

// ErrClosed is the cause of the exception (type Disconnected) of calls on
// a connection that has ended.
var ErrClosed = errors.New("connection closed")

// Conn is one CapTP connection. It is safe for concurrent use.
type Conn struct {
	codec Codec
	opts  Options
	log   *slog.Logger
	// ctx gives inbound calls' contexts (callCtx) their values; its end
	// (shutdown, or BaseContext's) cancels them. unwatch stops watchBase.
	ctx     context.Context
	stop    context.CancelFunc
	unwatch func() bool

	order sync.RWMutex // see the package comment

	mu        sync.Mutex
	questions []*question // by question id; nil: free. Guarded by c.mu.
	qfree     []uint32    // free question ids. Guarded by c.mu.
	// byAnswer finds the question of a call's answer (questionOf): every
	// call question from startCall until its id is freed. Guarded by c.mu.
	byAnswer  map[*capnp.Answer]*question
	answers   map[uint32]*answer // by question id. Guarded by c.mu.
	imports   map[uint32]*importEntry
	exports   []*export // by export id; nil: free. Guarded by c.mu.
	efree     []uint32  // free export ids. Guarded by c.mu.
	embargoes map[uint32]*embargo
	nextEmb   uint32
	// resolvedHooks are promise imports holding their resolution; go-capnp
	// does not always shut a resolved promise's hook down, so shutdown
	// releases what is left. Guarded by c.mu.
	resolvedHooks map[*importClient]struct{}
	closed        bool
	err           error // why the connection ended, once closed
	boot          capnp.Client

	// finMsg is the Finish message sendFinish reuses, fin its Finish;
	// both guarded by finMu, held while it is encoded.
	finMu  sync.Mutex
	finMsg *capnp.Message
	fin    rpccp.Finish

	tasks sync.WaitGroup // restores running
	// heldDisembargoes counts the peer's Disembargos queued on answers
	// still delivering pipelined calls (bounded by the answer budget).
	// Guarded by c.mu.
	heldDisembargoes int
	// restoring counts restores from their goroutine's start until their
	// Return is queued (MaxRestores). Guarded by c.mu.
	restoring int
	recvDone  chan struct{}
	done      chan struct{}
	once      sync.Once
}

// NewConn runs CapTP over codec and starts the receive loop.
func NewConn(codec Codec, opts *Options) *Conn {
	c := &Conn{
		codec:         codec,
		answers:       make(map[uint32]*answer),
		byAnswer:      make(map[*capnp.Answer]*question),
		imports:       make(map[uint32]*importEntry),
		embargoes:     make(map[uint32]*embargo),
		resolvedHooks: make(map[*importClient]struct{}),
		recvDone:      make(chan struct{}),
		done:          make(chan struct{}),
	}
	if opts != nil {
		c.opts = *opts
	}
	c.boot = c.opts.Bootstrap
	c.opts.Bootstrap = capnp.Client{}
	c.log = c.opts.Logger
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	base := c.opts.BaseContext
	if base == nil {
		base = context.Background()
	}
	c.ctx, c.stop = context.WithCancel(base)
	c.unwatch = context.AfterFunc(c.ctx, c.watchBase)
	go c.receive()
	return c
}

// Done is closed once the connection has ended and released what it held.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err returns why the connection ended, or nil while it runs.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close ends the connection: the peer gets an Abort, calls in both
// directions fail, the tables are emptied. It waits for the receive loop
// and running restores.
func (c *Conn) Close() error {
	c.shutdown(exc.New(exc.Disconnected, "", ErrClosed.Error()), "connection closed")
	<-c.done
	return nil
}

// receive reads and handles messages until the codec fails.
func (c *Conn) receive() {
	defer close(c.recvDone)
	for {
		msg, err := c.codec.Decode()
		if tl, ok := err.(*MessageTooLarge); ok {
			if !c.handleTooLarge(tl) {
				return
			}
			continue
		}
		if err != nil {
			go c.shutdown(exc.New(exc.Disconnected, "", "connection lost: "+err.Error()), "")
			return
		}
		if !c.handle(msg) {
			return
		}
	}
}

// handle dispatches one inbound message, which it owns; false ends the
// loop.
func (c *Conn) handle(msg *capnp.Message) bool {
	m, err := rpccp.ReadRootMessage(msg)
	if err != nil {
		msg.Release()
		c.abort("unreadable message: " + err.Error())
		return false
	}
	switch m.Which() {
	case rpccp.Message_Which_call:
		return c.handleCall(msg, m)
	case rpccp.Message_Which_return:
		return c.handleReturn(msg, m)
	case rpccp.Message_Which_finish:
		defer msg.Release()
		return c.handleFinish(m)
	case rpccp.Message_Which_release:
		defer msg.Release()
		return c.handleRelease(m)
	case rpccp.Message_Which_bootstrap:
		defer msg.Release()
		return c.handleBootstrap(m)
	case rpccp.Message_Which_resolve:
		return c.handleResolve(msg, m)
	case rpccp.Message_Which_disembargo:
		defer msg.Release()
		return c.handleDisembargo(msg, m)
	case rpccp.Message_Which_abort:
		defer msg.Release()
		reason := "peer aborted"
		if e, err := m.Abort(); err == nil {
			reason = "peer aborted: " + exceptionError(e).Error()
		}
		go c.shutdown(exc.New(exc.Disconnected, "", reason), "")
		return false
	case rpccp.Message_Which_unimplemented:
		defer msg.Release()
		return c.handleUnimplemented(m)
	default:
		// Levels 3 and 4 (provide, accept, join, third party answers) and
		// the obsolete save/delete: echo it back as Unimplemented.
		defer msg.Release()
		out, om, err := newMessage()
		if err == nil {
			err = om.SetUnimplemented(m)
		}
		if err == nil {
			c.send(out)
		}
		out.Release()
		return true
	}
}

// handleUnimplemented handles the peer's echo of a message it does not
// implement: a Bootstrap or Call of ours fails; anything else is ignored.
func (c *Conn) handleUnimplemented(m rpccp.Message) bool {
	um, err := m.Unimplemented()
	if err != nil {
		return true
	}
	var qid uint32
	switch um.Which() {
	case rpccp.Message_Which_bootstrap:
		b, _ := um.Bootstrap()
		qid = b.QuestionId()
	case rpccp.Message_Which_call:
		cl, _ := um.Call()
		qid = cl.QuestionId()
	default:
		return true
	}
	c.mu.Lock()
	q := c.questionLocked(qid)
	if q == nil || q.returned {
		c.mu.Unlock()
		return true
	}
	q.returned = true
	if !q.finished { // the peer keeps no answer: no Finish is due
		q.finished, q.finishSent = true, true
	} // else a cancel's Finish is on its way: the id is freed once it is out
	exps := q.paramExports // nor the params' capabilities
	q.paramExports = nil
	c.freeQuestionLocked(q)
	c.mu.Unlock()
	c.releaseExports(exps)
	q.resolve(capnp.Ptr{}, exc.New(exc.Unimplemented, "", "peer does not implement "+um.Which().String()))
	return true
}

// newMessage returns an empty message with an rpc Message root.
func newMessage() (*capnp.Message, rpccp.Message, error) {
	msg, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		return nil, rpccp.Message{}, err
	}
	m, err := rpccp.NewRootMessage(seg)
	if err != nil {
		msg.Release()
		return nil, rpccp.Message{}, err
	}
	return msg, m, nil
}

// send encodes msg (the caller keeps it). A codec failure ends the
// connection.
func (c *Conn) send(msg *capnp.Message) error {
	if err := c.codec.Encode(msg); err != nil {
		go c.shutdown(exc.New(exc.Disconnected, "", "connection lost: "+err.Error()), "")
		return exc.New(exc.Disconnected, "", "connection lost: "+err.Error())
	}
	return nil
}

// closedErr returns the error calls fail with once closed. c.mu is held.
func (c *Conn) closedErrLocked() error {
	if c.err != nil {
		return c.err
	}
	return exc.New(exc.Disconnected, "", ErrClosed.Error())
}

// abort ends the connection for a protocol violation: the peer gets an
// Abort with reason.
func (c *Conn) abort(reason string) {
	c.log.Debug("capnp protocol violation", "reason", reason)
	go func() {
		if c.shutdown(exc.New(exc.Failed, "", "protocol violation: "+reason), reason) {
			c.limit(ClosedProtocolViolation)
		}
	}()
}

// shutdown ends the connection once: tables are emptied, questions fail
// with err, inbound calls are cancelled, and, if abortReason is set, the
// peer gets an Abort first. It waits for the receive loop unless called
// from it.
func (c *Conn) shutdown(err error, abortReason string) (ended bool) {
	c.once.Do(func() {
		ended = true
		c.mu.Lock()
		c.closed = true
		c.err = err
		qs := c.questions
		c.questions, c.qfree, c.byAnswer = nil, nil, nil
		as := c.answers
		c.answers = map[uint32]*answer{}
		es := c.exports
		c.exports, c.efree = nil, nil
		ims := c.imports
		c.imports = map[uint32]*importEntry{}
		embs := c.embargoes
		c.embargoes = map[uint32]*embargo{}
		boot := c.boot
		c.boot = capnp.Client{}
		var resolved []capnp.Client
		for h := range c.resolvedHooks {
			resolved = append(resolved, h.resolved)
			h.resolved = capnp.Client{}
		}
		c.resolvedHooks = nil
		c.mu.Unlock()
		defer func() {
			for _, r := range resolved {
				r.Release()
			}
		}()

		if abortReason != "" {
			c.sendAbort(abortReason)
		}
		c.unwatch() // the calls are cancelled here
		c.stop()
		for _, a := range as {
			a.cancel()
		}
		_ = c.codec.Close()
		<-c.recvDone

		for _, q := range qs {
			if q != nil {
				q.resolve(capnp.Ptr{}, err)
			}
		}
		for _, a := range as {
			c.mu.Lock()
			queued, pipes := a.queued, a.pipes
			a.queued, a.pipes = nil, nil
			c.mu.Unlock()
			for _, qc := range queued {
				if !qc.disembargo {
					qc.r.Reject(err)
				}
			}
			for _, p := range pipes {
				p.resolver.Reject(err)
			}
			c.mu.Lock()
			if a.sending { // Return releases them when its send is over
				a.finished, a.releaseResultCaps = true, false
				c.mu.Unlock()
				continue
			}
			rm := a.results
			a.results = nil
			c.mu.Unlock()
			if rm != nil {
				rm.Release()
			}
		}
		for _, e := range es {
			if e != nil {
				e.client.Release()
			}
		}
		for _, im := range ims {
			for _, h := range im.resolvers {
				h.resolver.Reject(err)
			}
		}
		for _, e := range embs {
			e.hook.fail(err)
		}
		boot.Release()
		c.tasks.Wait()
		close(c.done)
	})
	return ended
}

// abortWait is how long shutdown waits for its Abort to be queued: a peer
// that reads nothing keeps the codec full, and closing the codec then
// ends the wait.
const abortWait = time.Second

// sendAbort sends an Abort with reason, waiting at most abortWait for the
// codec to take it.
func (c *Conn) sendAbort(reason string) {
	msg, m, err := newMessage()
	if err != nil {
		return
	}
	ex, err := m.NewAbort()
	if err == nil {
		ex.SetType(rpccp.Exception_Type_failed)
		err = ex.SetReason(reason)
	}
	if err != nil {
		msg.Release()
		return
	}
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		_ = c.codec.Encode(msg) // returns once queued, or when the codec closes
		msg.Release()
	}()
	t := time.NewTimer(abortWait)
	defer t.Stop()
	select {
	case <-sent:
	case <-t.C:
	}
}

// Stats counts what a connection holds.
type Stats struct {
	Questions, Answers, Imports, Exports, Embargoes int
}

// Stats returns the sizes of the connection's tables.
func (c *Conn) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Stats{Answers: len(c.answers), Imports: len(c.imports), Embargoes: len(c.embargoes)}
	for _, q := range c.questions {
		if q != nil {
			s.Questions++
		}
	}
	for _, e := range c.exports {
		if e != nil {
			s.Exports++
		}
	}
	return s
}

// barrier returns once every send holding order.RLock has encoded its
// message (see the package comment).
func (c *Conn) barrier() {
	c.order.Lock()
	//lint:ignore SA2001 the critical section is the wait itself
	c.order.Unlock()
}
