package engine

import (
	"bufio"
	"io"
	"sync"

	capnp "capnproto.org/go/capnp/v3"
)

// StreamCodec is a plain Codec on a byte stream: each Encode writes and
// flushes one message under a lock. The vat uses its own write-behind
// codec; this one serves tests and tools.
type StreamCodec struct {
	dec  *capnp.Decoder
	rwc  io.ReadWriteCloser
	mu   sync.Mutex // guards w and enc
	w    *bufio.Writer
	enc  *capnp.Encoder
	once sync.Once
}

// NewStreamCodec returns a codec on rwc that refuses inbound messages over
// maxMessageSize bytes (0: go-capnp's default).
func NewStreamCodec(rwc io.ReadWriteCloser, maxMessageSize uint64) *StreamCodec {
	dec := capnp.NewDecoder(bufio.NewReader(rwc))
	if maxMessageSize > 0 {
		dec.MaxMessageSize = maxMessageSize
	}
	w := bufio.NewWriter(rwc)
	return &StreamCodec{dec: dec, rwc: rwc, w: w, enc: capnp.NewEncoder(w)}
}

func (s *StreamCodec) Encode(m *capnp.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enc.Encode(m); err != nil {
		return err
	}
	return s.w.Flush()
}

func (s *StreamCodec) Decode() (*capnp.Message, error) { return s.dec.Decode() }

func (s *StreamCodec) Close() error {
	var err error
	s.once.Do(func() { err = s.rwc.Close() })
	return err
}
