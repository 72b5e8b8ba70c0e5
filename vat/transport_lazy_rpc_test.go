package vat

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc"
	"capnproto.org/go/capnp/v3/rpc/transport"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/vatcar/vatcar/proto/captp"
)

// emptyService answers every unary call with empty results.
type emptyService struct{}

func (emptyService) Unary(_ context.Context, call captp.GrpcService_unary) error {
	_, err := call.AllocResults()
	return err
}

func (emptyService) Open(context.Context, captp.GrpcService_open) error {
	return errors.New("open: not implemented by the test service")
}

// messageCounter is a codec that counts the messages it encodes by kind.
type messageCounter struct {
	*codec
	finishes, others atomic.Int64
}

func (m *messageCounter) Encode(msg *capnp.Message) error {
	if root, err := rpccp.ReadRootMessage(msg); err == nil && root.Which() == rpccp.Message_Which_finish {
		m.finishes.Add(1)
	} else {
		m.others.Add(1)
	}
	return m.codec.Encode(msg)
}

// rpcPair is a go-capnp client and server connection over loopback TLS,
// on codecs with the given lazy delay (0: no lazy messages), with the
// server's emptyService as the client's bootstrap capability.
type rpcPair struct {
	svc                  captp.GrpcService
	clientRaw, serverRaw *countingConn   // TCP under TLS: one write per TLS record here
	sent                 *messageCounter // what the client's codec encoded
}

func newRPCPair(tb testing.TB, lazyDelay time.Duration) *rpcPair {
	tb.Helper()
	client, server, clientRaw, serverRaw := tlsPair(tb)
	cc := newCodec(client, DefaultMaxMessageSize)
	sc := newCodec(server, DefaultMaxMessageSize)
	cc.lazyDelay, sc.lazyDelay = lazyDelay, lazyDelay
	sent := &messageCounter{codec: cc}
	svc := captp.GrpcService(connectRPC(tb, sent, sc, capnp.Client(captp.GrpcService_ServerToClient(emptyService{}))))
	return &rpcPair{svc: svc, clientRaw: clientRaw, serverRaw: serverRaw, sent: sent}
}

// connectRPC runs go-capnp connections on the client and server codecs,
// the server's bootstrap capability being boot, and returns the client's
// bootstrap capability; all of it ends with the test.
func connectRPC(tb testing.TB, client, server transport.Codec, boot capnp.Client) capnp.Client {
	tb.Helper()
	serverConn := rpc.NewConn(transport.New(server), &rpc.Options{BootstrapClient: boot})
	clientConn := rpc.NewConn(transport.New(client), nil)
	c := clientConn.Bootstrap(context.Background())
	tb.Cleanup(func() {
		c.Release()
		if err := clientConn.Close(); err != nil {
			tb.Errorf("close client conn: %v", err)
		}
		select {
		case <-serverConn.Done():
		case <-time.After(10 * time.Second):
			tb.Error("server conn still up 10s after the client closed")
		}
		_ = serverConn.Close()
	})
	return c
}

// unary makes one call and waits for its results.
func (p *rpcPair) unary(ctx context.Context) error {
	fut, release := p.svc.Unary(ctx, func(p captp.GrpcService_unary_Params) error {
		return p.SetRequest([]byte("x"))
	})
	defer release()
	_, err := fut.Struct()
	return err
}

// TestFinishRidesWithNextCall makes unary calls one at a time over real
// go-capnp connections, and after each waits (polling) until go-capnp has
// handed the codec the call's Finish, which it sends 250 ms after the
// Return, so no call is in flight when a Finish comes. Sent eagerly, each
// Finish is then a write of its own; sent lazily, with a timer that never
// fires, no Finish makes a write, and every one rides with the next call:
// the client makes no more writes than it sends messages that are not
// Finishes.
func TestFinishRidesWithNextCall(t *testing.T) {
	const finishes = 4
	for _, tc := range []struct {
		name  string
		delay time.Duration
	}{{"eager", 0}, {"lazy", never}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			p := newRPCPair(t, tc.delay)
			calls := 0
			for want := int64(1); want <= finishes; want++ {
				if err := p.unary(ctx); err != nil {
					t.Fatalf("call %d: %v", calls, err)
				}
				calls++
				before := p.clientRaw.writes.Load() // the call's writes are done: its Return came
				for p.sent.finishes.Load() < want {
					if ctx.Err() != nil {
						t.Fatalf("no Finish for call %d within 20s", calls)
					}
					time.Sleep(time.Millisecond) // poll for go-capnp's delayed Finish
				}
				if tc.delay != 0 {
					if w := p.clientRaw.writes.Load(); w != before {
						t.Fatalf("lazy: Finish %d made %d writes of its own", want, w-before)
					}
					continue
				}
				// Encode counted the Finish before the writer wrote it.
				for p.clientRaw.writes.Load() == before {
					if ctx.Err() != nil {
						t.Fatalf("eager: Finish %d not written on its own within 20s", want)
					}
					time.Sleep(time.Millisecond)
				}
			}
			fin, others := p.sent.finishes.Load(), p.sent.others.Load()
			writes := p.clientRaw.writes.Load()
			t.Logf("%d calls: client sent %d Finishes and %d other messages in %d writes; the server made %d writes",
				calls, fin, others, writes, p.serverRaw.writes.Load())
			if tc.delay == 0 {
				return
			}
			if writes > others {
				t.Errorf("lazy: %d writes for %d messages that are not Finishes, want at most one write each (Finishes riding along)", writes, others)
			}
		})
	}
}

// orderSink is a Sink server that checks each send carries the next
// number and counts the closes.
type orderSink struct {
	next   atomic.Int64
	bad    atomic.Int64
	closes atomic.Int64
}

func (s *orderSink) Headers(context.Context, captp.Sink_headers) error { return nil }

func (s *orderSink) Send(_ context.Context, call captp.Sink_send) error {
	chunks, err := call.Args().Chunks()
	if err != nil {
		return err
	}
	for i := range chunks.Len() {
		d, err := chunks.At(i).Data()
		if err != nil {
			return err
		}
		if want := s.next.Add(1) - 1; len(d) != 1 || int64(d[0]) != want%256 {
			s.bad.Add(1)
		}
	}
	return nil
}

func (s *orderSink) Close(context.Context, captp.Sink_close) error {
	s.closes.Add(1)
	return nil
}

// TestStreamReturnsRideWithClose streams sends over real go-capnp
// connections, one at a time: the next leaves once the Sink has taken the
// last, so each send's Return is the only message its side has to write.
// Eager, each Return is a write of its own. Lazy (send's Returns named by
// lazyReturn, with a timer that never fires), they wait and the close's
// Return takes them along: the sender's close and WaitStreaming still
// finish, every send arrives in order, and the Sink's side makes a handful
// of writes rather than one per send.
func TestStreamReturnsRideWithClose(t *testing.T) {
	const sends = 100
	for _, lazy := range []bool{false, true} {
		t.Run(fmt.Sprintf("lazy=%v", lazy), func(t *testing.T) {
			client, server, _, serverRaw := tlsPair(t)
			cc := newCodec(client, DefaultMaxMessageSize)
			sc := newCodec(server, DefaultMaxMessageSize)
			cc.lazyDelay, sc.lazyDelay = never, never
			if lazy {
				sc.lazyReturn = func(iface uint64, method uint16) bool { return iface == captp.Sink_TypeID && method == 1 }
			}
			sink := &orderSink{}
			s := captp.Sink(connectRPC(t, cc, sc, capnp.Client(captp.Sink_ServerToClient(sink))))
			if err := s.Resolve(context.Background()); err != nil {
				t.Fatal(err)
			}
			before := serverRaw.writes.Load()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			for i := range sends {
				err := s.Send(ctx, func(p captp.Sink_send_Params) error {
					l, err := p.NewChunks(1)
					if err != nil {
						return err
					}
					return l.At(0).SetData([]byte{byte(i)})
				})
				if err != nil {
					t.Fatalf("send %d: %v", i, err)
				}
				for sink.next.Load() <= int64(i) {
					if ctx.Err() != nil {
						t.Fatalf("send %d not taken within 20s", i)
					}
					runtime.Gosched()
				}
			}
			f, release := s.Close(ctx, nil)
			defer release()
			if _, err := f.Struct(); err != nil {
				t.Fatalf("close: %v", err)
			}
			if err := s.WaitStreaming(); err != nil {
				t.Fatalf("wait streaming: %v", err)
			}
			if n, bad, closes := sink.next.Load(), sink.bad.Load(), sink.closes.Load(); n != sends || bad != 0 || closes != 1 {
				t.Fatalf("sink got %d messages (%d out of order) and %d closes, want %d, 0 and 1", n, bad, closes, sends)
			}
			w := serverRaw.writes.Load() - before
			t.Logf("the Sink's side made %d writes for %d sends and a close", w, sends)
			switch {
			case lazy && w > sends/20:
				t.Errorf("lazy: %d writes, want the sends' Returns riding with the close's", w)
			case !lazy && w < sends/2:
				t.Errorf("eager: %d writes, want about one per send (else this test shows nothing)", w)
			}
		})
	}
}
