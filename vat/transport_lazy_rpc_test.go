package vat

import (
	"context"
	"errors"
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
	serverConn := rpc.NewConn(transport.New(sc), &rpc.Options{
		BootstrapClient: capnp.Client(captp.GrpcService_ServerToClient(emptyService{})),
	})
	clientConn := rpc.NewConn(transport.New(sent), nil)
	svc := captp.GrpcService(clientConn.Bootstrap(context.Background()))
	tb.Cleanup(func() {
		svc.Release()
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
	return &rpcPair{svc: svc, clientRaw: clientRaw, serverRaw: serverRaw, sent: sent}
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
// go-capnp connections until the client has sent some of the Finish
// messages go-capnp sends 250 ms after each Return. Sent eagerly, each
// Finish is a write of its own (the writer is idle while a call waits for
// its Return); sent lazily, with a timer that never fires, every Finish
// rides with the next call: the client makes no more writes than it sends
// messages that are not Finishes.
func TestFinishRidesWithNextCall(t *testing.T) {
	const finishes = 20
	for _, tc := range []struct {
		name  string
		delay time.Duration
	}{{"eager", 0}, {"lazy", never}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			p := newRPCPair(t, tc.delay)
			calls := 0
			for p.sent.finishes.Load() < finishes {
				if err := p.unary(ctx); err != nil {
					t.Fatalf("call %d: %v", calls, err)
				}
				calls++
			}
			// Writes first: every write counted was preceded by the
			// message that made it due.
			writes := p.clientRaw.writes.Load()
			fin, others := p.sent.finishes.Load(), p.sent.others.Load()
			t.Logf("%d calls: client sent %d Finishes and %d other messages in %d writes; the server made %d writes",
				calls, fin, others, writes, p.serverRaw.writes.Load())
			if tc.delay == 0 {
				if writes <= others {
					t.Errorf("eager: %d writes for %d other messages and %d Finishes, want Finishes written on their own", writes, others, fin)
				}
				return
			}
			if writes > others {
				t.Errorf("lazy: %d writes for %d messages that are not Finishes, want at most one write each (Finishes riding along)", writes, others)
			}
		})
	}
}
