package main

import (
	"bufio"
	"errors"
	"io"
	"net"
	"sync"

	capnp "capnproto.org/go/capnp/v3"
)

// Two transport codecs to compare in BenchmarkCapnpUnary; prototypes for the vat
// package, not used by the harness. vat/transport.go now writes behind like
// writeBehindCodec, and writes messages over 8 KiB directly like flushCodec.

// flushCodec writes each message through a bufio.Writer and flushes it: one write (one
// TLS record) per message instead of one per segment. This is what vat/transport.go did
// before it wrote behind.
type flushCodec struct {
	dec *capnp.Decoder
	enc *capnp.Encoder
	w   *bufio.Writer
	c   net.Conn
}

func newFlushCodec(c net.Conn) *flushCodec {
	w := bufio.NewWriterSize(c, 32<<10)
	return &flushCodec{dec: capnp.NewDecoder(bufio.NewReaderSize(c, 32<<10)), enc: capnp.NewEncoder(w), w: w, c: c}
}

func (f *flushCodec) Encode(m *capnp.Message) error {
	if err := f.enc.Encode(m); err != nil {
		return err
	}
	return f.w.Flush()
}

func (f *flushCodec) Decode() (*capnp.Message, error) { return f.dec.Decode() }
func (f *flushCodec) Close() error                    { return f.c.Close() }

// writeBehindCodec copies each message into a pending buffer and leaves the write to
// its own goroutine, which writes everything pending in one call: messages queued while
// a write is in flight leave together (one TLS record, one syscall), and a lone message
// leaves at once. No timer. Encode blocks while maxPending bytes wait.
type writeBehindCodec struct {
	dec *capnp.Decoder
	enc *capnp.Encoder // writes into pending through appender; used under mu
	c   net.Conn

	mu      sync.Mutex
	cond    sync.Cond // signalled when pending shrinks or the writer fails
	pending []byte
	err     error // sticky: the write that failed, or errCodecClosed

	wake chan struct{} // one token: there is something pending
	quit chan struct{} // closed by Close
	done chan struct{} // closed when the writer goroutine has returned
	once sync.Once
}

const maxPending = 4 << 20

var errCodecClosed = errors.New("codec closed")

func newWriteBehindCodec(c net.Conn) *writeBehindCodec {
	w := &writeBehindCodec{
		dec:  capnp.NewDecoder(bufio.NewReaderSize(c, 32<<10)),
		c:    c,
		wake: make(chan struct{}, 1),
		quit: make(chan struct{}),
		done: make(chan struct{}),
	}
	w.cond.L = &w.mu
	w.enc = capnp.NewEncoder(appender{w})
	go w.writeLoop()
	return w
}

// appender appends to pending; the caller holds mu.
type appender struct{ w *writeBehindCodec }

func (a appender) Write(b []byte) (int, error) {
	a.w.pending = append(a.w.pending, b...)
	return len(b), nil
}

func (w *writeBehindCodec) Encode(m *capnp.Message) error {
	w.mu.Lock()
	for w.err == nil && len(w.pending) >= maxPending {
		w.cond.Wait()
	}
	if w.err != nil {
		err := w.err
		w.mu.Unlock()
		return err
	}
	err := w.enc.Encode(m)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
	return err
}

func (w *writeBehindCodec) writeLoop() {
	defer close(w.done)
	var out []byte
	for {
		select {
		case <-w.wake:
		case <-w.quit:
			return
		}
		w.mu.Lock()
		out, w.pending = w.pending, out[:0]
		w.cond.Broadcast()
		w.mu.Unlock()
		if len(out) == 0 {
			continue
		}
		if _, err := w.c.Write(out); err != nil {
			w.mu.Lock()
			if w.err == nil {
				w.err = err
			}
			w.cond.Broadcast()
			w.mu.Unlock()
			return
		}
	}
}

func (w *writeBehindCodec) Decode() (*capnp.Message, error) { return w.dec.Decode() }

// Close stops the writer (what is pending is dropped, as a closed socket would) and
// closes the connection.
func (w *writeBehindCodec) Close() error {
	var err error
	w.once.Do(func() {
		w.mu.Lock()
		if w.err == nil {
			w.err = errCodecClosed
		}
		w.cond.Broadcast()
		w.mu.Unlock()
		close(w.quit)
		err = w.c.Close()
		<-w.done
	})
	return err
}

var _ io.Closer = (*writeBehindCodec)(nil)
