package vat

import (
	"bufio"
	"io"
	"net"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc/transport"
)

// DefaultMaxMessageSize is go-capnp's own limit on an inbound message.
const DefaultMaxMessageSize = 64 << 20

// codec frames capnp messages on a byte stream with a configurable limit on
// inbound message size. Each message is written in one flush, so a message
// is one TLS record rather than one per segment.
type codec struct {
	dec    *capnp.Decoder
	enc    *capnp.Encoder
	w      *bufio.Writer
	closer io.Closer
}

func newTransport(rwc io.ReadWriteCloser, maxMessageSize uint64) transport.Transport {
	w := bufio.NewWriterSize(rwc, 32<<10)
	dec := capnp.NewDecoder(bufio.NewReaderSize(rwc, 32<<10))
	dec.MaxMessageSize = maxMessageSize
	return transport.New(&codec{dec: dec, enc: capnp.NewEncoder(w), w: w, closer: rwc})
}

func (c *codec) Encode(m *capnp.Message) error {
	if err := c.enc.Encode(m); err != nil {
		return err
	}
	return c.w.Flush()
}

func (c *codec) Decode() (*capnp.Message, error) { return c.dec.Decode() }

func (c *codec) Close() error { return c.closer.Close() }

// tuneSocket turns on TCP_NODELAY and keepalive; other sockets are left
// alone.
func tuneSocket(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
		_ = tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: 10 * time.Second, Count: 3})
	}
}
