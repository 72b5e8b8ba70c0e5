package vat

// go-capnp's rpc.Conn as a vat's engine: an older vatcar peer, for tests
// only (newGoCapnpConn). The sidecar runs on vatcar's own engine.

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc"
	"capnproto.org/go/capnp/v3/rpc/transport"
)

func init() { newGoCapnpConn = goCapnpConn }

// goCapnpConn runs c on go-capnp's rpc.Conn over the vat's codec.
func goCapnpConn(v *Vat, c *Connection, endpoint net.Conn, mode Mode, boot capnp.Client, log *slog.Logger) capConn {
	var tr transport.Transport = newTransport(activityConn{Conn: endpoint, act: c.act}, v.cfg.maxMessageSize(), v.cfg.LazyReturn, v.answerBudget(log))
	if v.cfg.Insecure && mode == Accept {
		tr = &firstMessageTransport{Transport: tr, conn: endpoint} // see handshake
	}
	return rpc.NewConn(tr, &rpc.Options{
		BootstrapClient: boot, // restores count as calls too
		Logger:          rpcLogger{log},
	})
}

// newTransport returns a transport on rwc; lazyReturn is Config.LazyReturn.
func newTransport(rwc io.ReadWriteCloser, maxMessageSize uint64, lazyReturn func(uint64, uint16) bool, budget answerBudget) transport.Transport {
	c := newCodec(rwc, maxMessageSize)
	c.lazyReturn = lazyReturn
	c.maxAnswers, c.overBudget = budget.max, budget.over
	return transport.New(c)
}

// firstMessageTransport clears the read deadline that bounds the wait for
// a peer's first message once that message has arrived.
type firstMessageTransport struct {
	transport.Transport
	conn net.Conn
	once sync.Once
}

func (t *firstMessageTransport) RecvMessage() (transport.IncomingMessage, error) {
	m, err := t.Transport.RecvMessage()
	if err == nil {
		t.once.Do(func() { _ = t.conn.SetReadDeadline(time.Time{}) })
	}
	return m, err
}

// rpcLogger passes go-capnp's logs on at one level lower: what it calls an
// error is usually a peer going away.
type rpcLogger struct{ l *slog.Logger }

func (r rpcLogger) Debug(msg string, args ...any) { r.l.Debug(msg, args...) }
func (r rpcLogger) Info(msg string, args ...any)  { r.l.Debug(msg, args...) }
func (r rpcLogger) Warn(msg string, args ...any)  { r.l.Info(msg, args...) }
func (r rpcLogger) Error(msg string, args ...any) {
	r.l.Log(context.Background(), rpcErrorLevel(msg), msg, args...)
}

// normalEnds are the texts of the errors go-capnp reports (as text only:
// its Logger gets err.Error()) when a connection ends the ordinary way: the
// peer closed it (a clean shutdown sends an Abort "connection closed"), the
// peer went away while we closed our side (a restart, a rolled pod), or our
// own shutdown cancelled what was still being sent.
var normalEnds = []string{
	"remote abort: connection closed",
	"tls: failed to send closeNotify alert",
	"broken pipe",
	"connection reset by peer",
	"use of closed network connection",
	"context canceled",
	": EOF",
	"unexpected EOF",
}

// rpcErrorLevel is the level of an error go-capnp reports on a connection:
// Info for a connection that ended the ordinary way (see normalEnds; the
// import's own "disconnected; reconnecting" line says the rest), Warn for
// anything else (a protocol error, an abort with another reason).
func rpcErrorLevel(msg string) slog.Level {
	for _, s := range normalEnds {
		if strings.Contains(msg, s) {
			return slog.LevelInfo
		}
	}
	return slog.LevelWarn
}
