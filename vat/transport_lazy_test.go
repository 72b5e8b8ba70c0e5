package vat

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// never is a lazy delay long enough that a lazy message can only leave with
// another message, past the bound, or on Close.
const never = time.Hour

// countingConn counts the writes made to a net.Conn, and the reads that
// returned bytes.
type countingConn struct {
	net.Conn
	writes, reads atomic.Int64
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.reads.Add(1)
	}
	return n, err
}

func (c *countingConn) Write(b []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(b)
}

// tlsPair returns both ends of a loopback TLS 1.3 connection, handshakes
// done, each on a countingConn whose count starts after the handshake.
func tlsPair(tb testing.TB) (client, server *tls.Conn, clientRaw, serverRaw *countingConn) {
	tb.Helper()
	a, b := tcpPair(tb)
	ck, err := GenerateKey()
	if err != nil {
		tb.Fatal(err)
	}
	sk, err := GenerateKey()
	if err != nil {
		tb.Fatal(err)
	}
	clientRaw, serverRaw = &countingConn{Conn: a}, &countingConn{Conn: b}
	client = tls.Client(clientRaw, clientTLS(ck.cert, sk.Digest()))
	server = tls.Server(serverRaw, serverTLS(sk.cert))
	shook := make(chan error, 1)
	go func() { shook <- server.Handshake() }()
	if err := client.Handshake(); err != nil {
		tb.Fatalf("client handshake: %v", err)
	}
	if err := <-shook; err != nil {
		tb.Fatalf("server handshake: %v", err)
	}
	for _, c := range []*countingConn{clientRaw, serverRaw} {
		c.writes.Store(0)
		c.reads.Store(0)
	}
	return client, server, clientRaw, serverRaw
}

// wireMessage is what the order tests send: an rpc Message of one kind,
// numbered, and for calls a payload of size bytes.
type wireMessage struct {
	kind string // "finish" (lazy), "release" (lazy), "cancel" (a cancelling Finish), "call", "return", "exception"
	id   uint32
	size int
	// Calls only: the method called.
	iface  uint64
	method uint16
}

func (w wireMessage) String() string { return fmt.Sprintf("%s#%d(%d)", w.kind, w.id, w.size) }

// build encodes w as an rpc Message the way go-capnp would.
func (w wireMessage) build() *capnp.Message {
	msg, seg := capnp.NewMultiSegmentMessage(nil)
	m, err := rpccp.NewRootMessage(seg)
	if err != nil {
		panic(err)
	}
	switch w.kind {
	case "finish", "cancel":
		f, err := m.NewFinish()
		if err != nil {
			panic(err)
		}
		f.SetQuestionId(w.id)
		f.SetReleaseResultCaps(w.kind == "cancel")
	case "release":
		r, err := m.NewRelease()
		if err != nil {
			panic(err)
		}
		r.SetId(w.id)
		r.SetReferenceCount(1)
	case "call":
		c, err := m.NewCall()
		if err == nil {
			c.SetQuestionId(w.id)
			c.SetInterfaceId(w.iface)
			c.SetMethodId(w.method)
			err = setContent(c, seg, bytes.Repeat([]byte{byte(w.id)}, w.size))
		}
		if err != nil {
			panic(err)
		}
	case "return", "exception":
		r, err := m.NewReturn()
		if err == nil {
			r.SetAnswerId(w.id)
			if w.kind == "return" {
				var res rpccp.Payload
				if res, err = r.NewResults(); err == nil && w.size > 0 {
					if d, derr := capnp.NewData(seg, make([]byte, w.size)); derr != nil {
						err = derr
					} else {
						err = res.SetContent(d.ToPtr())
					}
				}
			} else {
				var e rpccp.Exception
				if e, err = r.NewException(); err == nil {
					err = e.SetReason("test failure")
				}
			}
		}
		if err != nil {
			panic(err)
		}
	}
	return msg
}

func setContent(c rpccp.Call, seg *capnp.Segment, b []byte) error {
	p, err := c.NewParams()
	if err != nil {
		return err
	}
	d, err := capnp.NewData(seg, b)
	if err != nil {
		return err
	}
	return p.SetContent(d.ToPtr())
}

// readWire decodes a message sent by wireMessage.build.
func readWire(dec *capnp.Decoder) (wireMessage, error) {
	msg, err := dec.Decode()
	if err != nil {
		return wireMessage{}, err
	}
	m, err := rpccp.ReadRootMessage(msg)
	if err != nil {
		return wireMessage{}, err
	}
	switch m.Which() {
	case rpccp.Message_Which_finish:
		f, err := m.Finish()
		if err != nil {
			return wireMessage{}, err
		}
		kind := "finish"
		if f.ReleaseResultCaps() {
			kind = "cancel"
		}
		return wireMessage{kind: kind, id: f.QuestionId()}, nil
	case rpccp.Message_Which_release:
		r, err := m.Release()
		return wireMessage{kind: "release", id: r.Id()}, err
	case rpccp.Message_Which_return:
		r, err := m.Return()
		if err != nil {
			return wireMessage{}, err
		}
		kind := "return"
		if r.Which() == rpccp.Return_Which_exception {
			kind = "exception"
		}
		return wireMessage{kind: kind, id: r.AnswerId()}, nil
	case rpccp.Message_Which_call:
		c, err := m.Call()
		if err != nil {
			return wireMessage{}, err
		}
		p, err := c.Params()
		if err != nil {
			return wireMessage{}, err
		}
		content, err := p.Content()
		if err != nil {
			return wireMessage{}, err
		}
		return wireMessage{kind: "call", id: c.QuestionId(), size: len(content.Data()), iface: c.InterfaceId(), method: c.MethodId()}, nil
	}
	return wireMessage{}, fmt.Errorf("unexpected message %v", m.Which())
}

// received is a message the peer read, or the error that ended its stream.
type received struct {
	w   wireMessage
	err error
}

// readAll decodes messages from r and sends each on the channel it
// returns, then the error that ended the stream.
func readAll(r io.Reader) <-chan received {
	ch := make(chan received, 16)
	go func() {
		dec := capnp.NewDecoder(r)
		dec.MaxMessageSize = DefaultMaxMessageSize
		for {
			w, err := readWire(dec)
			ch <- received{w, err}
			if err != nil {
				return
			}
		}
	}()
	return ch
}

// expect fails the test unless the next messages on ch are want, each
// within 10 s.
func expect(t *testing.T, ch <-chan received, want ...wireMessage) {
	t.Helper()
	for i, w := range want {
		select {
		case r := <-ch:
			if r.err != nil {
				t.Fatalf("stream ended after %d of %d messages: %v", i, len(want), r.err)
			}
			if r.w != w {
				t.Fatalf("message %d: got %v, want %v", i, r.w, w)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("message %d (%v) not received within 10s", i, w)
		}
	}
}

// expectEOF reads the rest of ch and fails the test unless the stream ends
// cleanly; it returns how many messages came before the end.
func expectEOF(t *testing.T, ch <-chan received) int {
	t.Helper()
	for n := 0; ; n++ {
		if r := <-ch; r.err != nil {
			if r.err != io.EOF {
				t.Errorf("stream ended with %v, want EOF", r.err)
			}
			return n
		}
	}
}

func TestIsLazy(t *testing.T) {
	// A codec tracking no answers classifies by kind alone; anything that
	// is not an rpc Message is not lazy.
	isLazy := func(m *capnp.Message) bool {
		lazy, _, _ := new(codec).classifyLazy(m)
		return lazy
	}
	for _, tc := range []struct {
		kind string
		want bool
	}{{"finish", true}, {"release", true}, {"cancel", false}, {"call", false}, {"return", false}, {"exception", false}} {
		if got := isLazy(wireMessage{kind: tc.kind, size: 10}.build()); got != tc.want {
			t.Errorf("isLazy(%s) = %v, want %v", tc.kind, got, tc.want)
		}
	}
	if isLazy(testMessage(0, 100)) {
		t.Error("isLazy(a Data root) = true, want false")
	}
}

// TestLazyMessagesKeepOrder sends a mix of lazy messages, small and large
// calls and cancelling Finishes over TLS, and closes: the peer gets every
// message in the order sent. With a lazy delay that never fires, lazy
// messages can only leave with the others (the large ones written from
// Encode too) or on Close; with a very short one, the timer flushes them
// between the others as well.
func TestLazyMessagesKeepOrder(t *testing.T) {
	pattern := []wireMessage{
		{kind: "finish"}, {kind: "release"}, {kind: "call", size: 100},
		{kind: "finish"}, {kind: "call", size: 2 * directSize},
		{kind: "release"}, {kind: "release"}, {kind: "cancel"},
		{kind: "finish"}, {kind: "call", size: 3 * directSize}, {kind: "call", size: 10},
		{kind: "finish"},
	}
	for _, delay := range []time.Duration{never, 20 * time.Microsecond} {
		t.Run(delay.String(), func(t *testing.T) {
			client, server, _, _ := tlsPair(t)
			c := newCodec(client, DefaultMaxMessageSize)
			c.lazyDelay = delay
			got := readAll(server)
			var sent []wireMessage
			for i := range 40 * len(pattern) {
				w := pattern[i%len(pattern)]
				w.id = uint32(i)
				sent = append(sent, w)
				if err := c.Encode(w.build()); err != nil {
					t.Fatalf("encode %v: %v", w, err)
				}
			}
			closed := make(chan error, 1)
			go func() { closed <- c.Close() }()
			expect(t, got, sent...)
			if n := expectEOF(t, got); n != 0 {
				t.Errorf("%d messages more than sent", n)
			}
			if err := <-closed; err != nil {
				t.Errorf("close: %v", err)
			}
		})
	}
}

// TestLoneLazyMessageLeaves sends one lazy message and nothing else: the
// lazy timer sends it, and is then disarmed.
func TestLoneLazyMessageLeaves(t *testing.T) {
	client, server, clientRaw, _ := tlsPair(t)
	c := newCodec(client, DefaultMaxMessageSize)
	got := readAll(server)
	want := wireMessage{kind: "release", id: 7}
	if err := c.Encode(want.build()); err != nil {
		t.Fatal(err)
	}
	expect(t, got, want)
	if n := clientRaw.writes.Load(); n != 1 {
		t.Errorf("%d writes, want 1", n)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		c.mu.Lock()
		on := c.timerOn
		c.mu.Unlock()
		if !on {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("lazy timer still armed 10s after its message left")
		}
		time.Sleep(time.Millisecond)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	expectEOF(t, got)
}

// TestCloseFlushesLazyMessages queues lazy messages that nothing would send
// before Close: they wait, and Close sends them.
func TestCloseFlushesLazyMessages(t *testing.T) {
	client, server, clientRaw, _ := tlsPair(t)
	c := newCodec(client, DefaultMaxMessageSize)
	c.lazyDelay = never
	got := readAll(server)
	sent := []wireMessage{{kind: "finish", id: 1}, {kind: "release", id: 2}, {kind: "finish", id: 3}}
	for _, w := range sent {
		if err := c.Encode(w.build()); err != nil {
			t.Fatal(err)
		}
	}
	c.mu.Lock()
	waiting, due := len(c.pending) > 0, c.due
	c.mu.Unlock()
	if !waiting || due || clientRaw.writes.Load() != 0 {
		t.Fatalf("before Close: pending %v, due %v, %d writes; want pending, not due, no writes", waiting, due, clientRaw.writes.Load())
	}
	if err := c.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	expect(t, got, sent...)
	if n := expectEOF(t, got); n != 0 {
		t.Errorf("%d messages more than sent", n)
	}
}

// TestLazyMessagesBounded queues lazy messages past maxLazyPending: they
// leave without waiting for the timer, another message or Close.
func TestLazyMessagesBounded(t *testing.T) {
	client, server, _, _ := tlsPair(t)
	c := newCodec(client, DefaultMaxMessageSize)
	c.lazyDelay = never
	got := readAll(server)
	size := len(must(wireMessage{kind: "release"}.build().Marshal()))
	n := maxLazyPending/size + 1
	for i := range n {
		if err := c.Encode(wireMessage{kind: "release", id: uint32(i)}.build()); err != nil {
			t.Fatal(err)
		}
	}
	// Close has not been called, and the timer never fires.
	expect(t, got, wireMessage{kind: "release", id: 0})
	if err := c.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if rest := expectEOF(t, got); rest != n-1 {
		t.Errorf("%d messages after the first, want %d", rest, n-1)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// lazyReturnCodec returns a codec on the server end of a TLS pair whose
// lazy timer never fires and whose Returns to lazyReturn's methods are
// lazy; an encoder that sends it calls from the client end; what the client
// end reads; and the server end's write counter.
func lazyReturnCodec(t *testing.T, lazyReturn func(uint64, uint16) bool) (*codec, *capnp.Encoder, <-chan received, *countingConn) {
	t.Helper()
	client, server, _, serverRaw := tlsPair(t)
	c := newCodec(server, DefaultMaxMessageSize)
	c.lazyDelay = never
	c.lazyReturn = lazyReturn
	return c, capnp.NewEncoder(client), readAll(client), serverRaw
}

// TestLazyReturns has a codec read calls to a method its lazyReturn names
// and to others, then answer them. A successful Return to a small call of
// that method waits like a Finish; an exception, a Return to another
// method's call or to a large call is due at once and takes the waiting
// ones with it, in order. Each answered id is forgotten, so a later Return
// with the same id (the question id reused) is due at once.
func TestLazyReturns(t *testing.T) {
	const sink, send, other = 0xa5cc, 1, 2
	c, enc, got, serverRaw := lazyReturnCodec(t, func(iface uint64, method uint16) bool { return iface == sink && method == send })
	calls := []wireMessage{
		{kind: "call", id: 1, iface: sink, method: send, size: 100},
		{kind: "call", id: 2, iface: sink, method: send, size: 100},
		{kind: "call", id: 3, iface: sink, method: other, size: 100},
		{kind: "call", id: 4, iface: sink, method: send, size: lazyCallMax + 1},
		{kind: "call", id: 5, iface: sink, method: send, size: 100},
		{kind: "call", id: 6, iface: sink, method: send, size: 100},
	}
	for _, w := range calls {
		if err := enc.Encode(w.build()); err != nil {
			t.Fatal(err)
		}
	}
	for _, w := range calls {
		m, err := c.Decode()
		if err != nil {
			t.Fatal(err)
		}
		r, err := readWire(capnp.NewDecoder(bytes.NewReader(must(m.Marshal()))))
		if err != nil || r != w {
			t.Fatalf("decoded %v, %v; want %v", r, err, w)
		}
	}
	waiting := func(step string, want bool) {
		t.Helper()
		c.mu.Lock()
		pending, due := len(c.pending) > 0, c.due
		c.mu.Unlock()
		if w := serverRaw.writes.Load(); (pending && !due && w == 0) != want {
			t.Fatalf("%s: pending %v, due %v, %d writes; want lazy waiting %v", step, pending, due, w, want)
		}
	}
	encode := func(w wireMessage) {
		t.Helper()
		if err := c.Encode(w.build()); err != nil {
			t.Fatal(err)
		}
	}
	encode(wireMessage{kind: "return", id: 1})
	encode(wireMessage{kind: "return", id: 2})
	waiting("after two Returns to small sends", true)
	encode(wireMessage{kind: "exception", id: 5})
	expect(t, got, wireMessage{kind: "return", id: 1}, wireMessage{kind: "return", id: 2}, wireMessage{kind: "exception", id: 5})
	for _, id := range []uint32{3, 4, 1} { // another method, a large call, an id already answered
		before := serverRaw.writes.Load()
		encode(wireMessage{kind: "return", id: id})
		expect(t, got, wireMessage{kind: "return", id: id})
		if serverRaw.writes.Load() == before {
			t.Errorf("Return %d left without a write of its own", id)
		}
	}
	// A large Return (written from Encode's goroutine) is never lazy, and
	// its id is forgotten too.
	encode(wireMessage{kind: "return", id: 6, size: 2 * directSize})
	expect(t, got, wireMessage{kind: "return", id: 6})
	c.mu.Lock()
	left := len(c.lazyAnswers)
	c.mu.Unlock()
	if left != 0 {
		t.Errorf("%d answer ids still remembered after every call was answered", left)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	expectEOF(t, got)
}

// TestLazyReturnsBounded answers small calls of a lazy-Return method whose
// sizes add up past lazyAckMax: the Returns wait while the calls they answer
// add up to at most lazyAckMax bytes, and leave, all together, with the one
// that passes it (the timer never fires).
func TestLazyReturnsBounded(t *testing.T) {
	c, enc, got, serverRaw := lazyReturnCodec(t, func(uint64, uint16) bool { return true })
	size := lazyCallMax - 1024
	n := lazyAckMax/size + 2
	sizes := make([]int, n)
	for i := range n {
		m := wireMessage{kind: "call", id: uint32(i), size: size}.build()
		sizes[i] = int(must(m.TotalSize()))
		if err := enc.Encode(m); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Decode(); err != nil {
			t.Fatal(err)
		}
	}
	acked := 0
	for i := range n {
		acked += sizes[i]
		if err := c.Encode(wireMessage{kind: "return", id: uint32(i)}.build()); err != nil {
			t.Fatal(err)
		}
		if acked <= lazyAckMax {
			if w := serverRaw.writes.Load(); w != 0 {
				t.Fatalf("Return %d (answering %d bytes of calls in all) made %d writes, want it waiting", i, acked, w)
			}
			continue
		}
		var want []wireMessage
		for j := range i + 1 {
			want = append(want, wireMessage{kind: "return", id: uint32(j)})
		}
		expect(t, got, want...)
		break
	}
	if acked <= lazyAckMax {
		t.Fatalf("the calls add up to %d bytes, not past lazyAckMax", acked)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	expectEOF(t, got)
}

// TestLazyReturnsBoundedByCount answers tiny calls of a lazy-Return method:
// however few bytes they add up to, lazyAckCalls Returns leave together,
// with the one that reaches the count (the timer never fires), so a sender
// that bounds its calls in flight by count does not wait for it.
func TestLazyReturnsBoundedByCount(t *testing.T) {
	c, enc, got, serverRaw := lazyReturnCodec(t, func(uint64, uint16) bool { return true })
	for i := range lazyAckCalls {
		m := wireMessage{kind: "call", id: uint32(i), size: 100}.build()
		if err := enc.Encode(m); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Decode(); err != nil {
			t.Fatal(err)
		}
	}
	var want []wireMessage
	for i := range lazyAckCalls {
		if err := c.Encode(wireMessage{kind: "return", id: uint32(i)}.build()); err != nil {
			t.Fatal(err)
		}
		want = append(want, wireMessage{kind: "return", id: uint32(i)})
		if i < lazyAckCalls-1 {
			if w := serverRaw.writes.Load(); w != 0 {
				t.Fatalf("Return %d of %d made %d writes, want it waiting", i, lazyAckCalls, w)
			}
		}
	}
	expect(t, got, want...)
	if err := c.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	expectEOF(t, got)
}
