package vat

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"runtime"
	"sync"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// DefaultMaxMessageSize is go-capnp's own limit on an inbound message.
const DefaultMaxMessageSize = 64 << 20

const (
	// maxPending is how many encoded bytes may wait for the writer before
	// Encode blocks.
	maxPending = 4 << 20
	// keepBuffer is the largest write buffer kept between writes; a larger
	// one (a big message went through) goes back to the garbage collector.
	keepBuffer = 256 << 10
	// closeFlushTimeout bounds how long Close waits for pending messages
	// (go-capnp's Abort is the last one) to reach a peer that is not reading.
	closeFlushTimeout = time.Second
	// directSize is the size above which a message is written from Encode's
	// goroutine rather than copied for the writer.
	directSize = 8 << 10
)

// errTransportClosed is what Encode returns after Close.
var errTransportClosed = errors.New("vat: transport closed")

// codec frames capnp messages on a byte stream with a configurable limit on
// inbound message size. It writes behind: Encode copies the message into a
// pending buffer and returns, and the codec's writer goroutine writes
// whatever is pending in one write. go-capnp's send loop (the only caller of
// Encode) goes on to the next message while a write is in flight, and the
// messages queued meanwhile leave together: one TLS record and one syscall.
// A lone message leaves at once, except a lazy one (see transport_lazy.go):
// housekeeping that nobody waits for rides with the next message, or leaves
// when the lazy timer fires. Messages leave in the order Encode got them.
// Nothing is left behind: the writer runs until the buffer is empty, and
// Close waits for it (up to closeFlushTimeout) before closing the
// connection.
//
// Locking: mu guards the fields below it. Exactly one goroutine writes to
// conn at a time, the one that set writing; it takes the whole of pending
// under mu and writes without holding it.
type codec struct {
	dec    *frameReader
	conn   io.ReadWriteCloser
	direct *bufio.Writer  // to conn, for large messages; used while writing
	denc   *capnp.Encoder // encodes into direct
	// lazyDelay is how long a lazy message may wait for company; zero sends
	// every message at once. Set before the first Encode.
	lazyDelay time.Duration
	// lazyReturn, if not nil, names the methods whose Returns are lazy
	// (Config.LazyReturn). Set before the first Decode.
	lazyReturn func(interfaceID uint64, methodID uint16) bool
	// maxAnswers bounds the peer's calls not yet finished (Config.MaxAnswers;
	// 0: none); overBudget, if not nil, is told when Decode refuses for it.
	// Set before the first Decode. unfinished is used by Decode alone.
	maxAnswers int
	overBudget func()
	unfinished int

	mu        sync.Mutex
	space     sync.Cond   // signalled when pending shrinks, a write ends, or err is set
	pending   []byte      // encoded messages not yet given to a writer
	spare     []byte      // the previous write's buffer, for pending to reuse
	due       bool        // pending holds a message that must leave now
	lazySince time.Time   // when the oldest pending lazy message came, while not due
	lazyTimer *time.Timer // runs lazyTimeout; nil until first armed
	timerOn   bool        // lazyTimer is armed
	writing   bool        // someone (the writer, or Encode for a large message) writes to conn
	closing   bool        // Close was called: the writer exits when pending is empty
	err       error       // sticky: the failed write, or errTransportClosed
	// lazyAnswers are the question ids of received calls whose Return may
	// be lazy, with the calls' sizes (see noteCall); an id leaves when its
	// Return is encoded.
	lazyAnswers map[uint32]uint32
	lazyAcked   int // bytes of calls answered by the lazy Returns in pending
	lazyAcks    int // how many lazy Returns are in pending

	// yield makes the writer yield once when woken, before it writes; set
	// by newCodec when the process runs on one P. Woken on its channel, the
	// writer runs next on that P: it would write the one message whose
	// Encode woke it as soon as that goroutine parks. Yielding lets the
	// goroutines already runnable (more calls and Returns being encoded)
	// queue theirs for the same write (bench unary-100B-c64: about 1.05 ->
	// 0.1 sendto per call in each sidecar; docs/design.md). With more Ps,
	// Gosched hands the writer to an idle P at once: it would only add a
	// wake-up.
	yield bool

	wake chan struct{} // one token: pending, due or closing changed
	done chan struct{} // closed when the writer has returned
	once sync.Once
}

// answerBudget is Config.MaxAnswers for a codec, and whom to tell when a
// peer goes over it.
type answerBudget struct {
	max  int // 0: no bound
	over func()
}

// newCodec returns a codec on rwc and starts its writer.
func newCodec(rwc io.ReadWriteCloser, maxMessageSize uint64) *codec {
	br := bufio.NewReaderSize(rwc, 32<<10)
	dec := capnp.NewDecoder(br)
	dec.MaxMessageSize = maxMessageSize
	if maxMessageSize == 0 {
		maxMessageSize = DefaultMaxMessageSize
	}
	c := &codec{dec: &frameReader{br: br, dec: dec, max: maxMessageSize, closeConn: rwc.Close}, conn: rwc, lazyDelay: lazyDelay, wake: make(chan struct{}, 1), done: make(chan struct{})}
	c.space.L = &c.mu
	c.yield = runtime.GOMAXPROCS(0) == 1
	c.direct = bufio.NewWriterSize(rwc, 32<<10)
	c.denc = capnp.NewEncoder(c.direct)
	go c.writeLoop()
	return c
}

// appendFrame appends m in the stream framing (capnp.Encoder's: the
// segment count less one, each segment's size in words, padding to a word,
// then the segments) to dst. Unlike capnp.Encoder it allocates nothing:
// the Encoder's net.Buffers write escapes to the heap once per message. On
// error dst is returned as it was.
func appendFrame(dst []byte, m *capnp.Message) ([]byte, error) {
	n := m.NumSegments()
	if n <= 0 || n > 1<<16 {
		return dst, fmt.Errorf("encode: message has %d segments", n)
	}
	start := len(dst)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(n-1))
	for i := range n {
		s, err := m.Segment(capnp.SegmentID(i))
		if err != nil {
			return dst[:start], fmt.Errorf("encode: %w", err)
		}
		d := s.Data()
		if len(d)%8 != 0 || uint64(len(d)) > math.MaxUint32-8 {
			return dst[:start], fmt.Errorf("encode: segment %d has %d bytes", i, len(d))
		}
		dst = binary.LittleEndian.AppendUint32(dst, uint32(len(d)/8))
	}
	if n%2 == 0 {
		dst = binary.LittleEndian.AppendUint32(dst, 0)
	}
	for i := range n {
		s, _ := m.Segment(capnp.SegmentID(i))
		dst = append(dst, s.Data()...)
	}
	return dst, nil
}

func (c *codec) Encode(m *capnp.Message) error {
	if size, err := m.TotalSize(); err == nil && size > directSize {
		return c.encodeDirect(m)
	}
	lazy, answer, results := false, noAnswer, false
	if c.lazyDelay > 0 {
		lazy, answer, results = c.classifyLazy(m)
	}
	c.mu.Lock()
	for c.err == nil && len(c.pending) >= maxPending {
		c.space.Wait()
	}
	if answer != noAnswer {
		lazy = c.takeLazyAnswer(answer, results)
	}
	err := c.usable()
	if err == nil {
		c.pending, err = appendFrame(c.pending, m)
	}
	if err == nil {
		if lazy {
			c.queuedLazy()
		} else {
			c.due = true
		}
	}
	due := c.due
	c.mu.Unlock()
	if err != nil {
		return err
	}
	if due {
		c.signal()
	}
	return nil
}

// usable returns why the codec cannot take a message, or nil; the caller
// holds mu.
func (c *codec) usable() error {
	if c.err == nil && c.closing {
		return errTransportClosed
	}
	return c.err
}

// encodeDirect writes a large message from the caller's goroutine once the
// writer is idle: copying it into pending would cost more than the hand-off
// saves. Whatever is pending (lazy messages, say) goes first, in the same
// buffered write, so order is kept.
func (c *codec) encodeDirect(m *capnp.Message) error {
	answer := noAnswer
	if c.lazyReturn != nil && c.lazyDelay > 0 {
		_, answer, _ = c.classifyLazy(m)
	}
	c.mu.Lock()
	for c.err == nil && c.writing {
		c.space.Wait()
	}
	if answer != noAnswer {
		c.takeLazyAnswer(answer, false) // a large Return is never lazy
	}
	if err := c.usable(); err != nil {
		c.mu.Unlock()
		return err
	}
	out := c.takePending()
	c.mu.Unlock()
	_, err := c.direct.Write(out)
	if err == nil {
		err = c.denc.Encode(m)
	}
	if err == nil {
		err = c.direct.Flush()
	}
	c.mu.Lock()
	c.wrote(out, err)
	c.mu.Unlock()
	c.signal() // the writer may have messages that came meanwhile, or Close may wait
	return err
}

// takePending hands all of pending to the caller, who becomes the one
// writer; the caller holds mu, and calls wrote when the write is over.
func (c *codec) takePending() []byte {
	out := c.pending
	c.pending, c.spare = c.spare[:0], nil
	c.due, c.lazySince, c.lazyAcked, c.lazyAcks = false, time.Time{}, 0, 0
	c.writing = true
	c.space.Broadcast()
	return out
}

// wrote ends a write of out that returned err; the caller holds mu.
func (c *codec) wrote(out []byte, err error) {
	c.writing = false
	if err != nil && c.err == nil {
		c.err = err
	}
	if c.err != nil {
		c.pending = nil
	} else if cap(out) <= keepBuffer {
		c.spare = out[:0]
	}
	c.space.Broadcast()
}

// signal wakes the writer unless a wake-up is already due.
func (c *codec) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// writeLoop writes what is pending once it is due, until the codec closes
// with nothing pending or a write fails. Closing makes everything due.
func (c *codec) writeLoop() {
	defer close(c.done)
	for {
		c.mu.Lock()
		// Wait for messages due to leave, or for Close, while nobody else
		// writes.
		for c.err == nil && (c.writing || !c.closing && (len(c.pending) == 0 || !c.due)) {
			c.mu.Unlock()
			<-c.wake
			if c.yield {
				runtime.Gosched()
			}
			c.mu.Lock()
		}
		if c.err != nil || len(c.pending) == 0 {
			c.mu.Unlock()
			return
		}
		out := c.takePending()
		c.mu.Unlock()
		_, err := c.conn.Write(out)
		c.mu.Lock()
		c.wrote(out, err)
		c.mu.Unlock()
	}
}

func (c *codec) Decode() (*capnp.Message, error) {
	m, err := c.dec.decode()
	if err != nil {
		return m, err
	}
	lazy := c.lazyReturn != nil && c.lazyDelay > 0
	if c.maxAnswers == 0 && !lazy {
		return m, nil
	}
	root, rerr := rpccp.ReadRootMessage(m)
	if rerr != nil {
		return m, nil // go-capnp reports it
	}
	if err := c.countAnswers(root); err != nil {
		m.Release()
		return nil, err
	}
	if lazy {
		c.noteCall(root, m)
	}
	return m, nil
}

// countAnswers keeps the count of the peer's calls it has not finished: a
// Call or Bootstrap adds one, a Finish takes one away. Over maxAnswers it
// fails, which ends the connection.
func (c *codec) countAnswers(root rpccp.Message) error {
	if c.maxAnswers == 0 {
		return nil
	}
	switch root.Which() {
	case rpccp.Message_Which_call, rpccp.Message_Which_bootstrap:
		c.unfinished++
		if c.unfinished > c.maxAnswers {
			if c.overBudget != nil {
				c.overBudget()
			}
			return fmt.Errorf("%w: the peer made %d calls it has not finished, over the budget of %d", ErrAnswerBudget, c.unfinished, c.maxAnswers)
		}
	case rpccp.Message_Which_finish:
		if c.unfinished > 0 {
			c.unfinished--
		}
	}
	return nil
}

// Close lets the writer finish what is pending, for at most
// closeFlushTimeout, then closes the connection, which also ends a write
// still blocked on the peer.
func (c *codec) Close() error {
	var err error
	c.once.Do(func() {
		c.mu.Lock()
		c.closing = true
		c.stopLazyTimer()
		c.mu.Unlock()
		c.signal()
		t := time.NewTimer(closeFlushTimeout)
		select {
		case <-c.done:
		case <-t.C:
		}
		t.Stop()
		err = c.conn.Close()
		<-c.done
		c.mu.Lock()
		if c.err == nil {
			c.err = errTransportClosed
		}
		c.space.Broadcast()
		c.mu.Unlock()
	})
	return err
}

// tuneSocket turns on TCP_NODELAY and keepalive; other sockets are left
// alone.
func tuneSocket(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
		_ = tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: 10 * time.Second, Count: 3})
	}
}
