package vat

import (
	"bytes"
	"testing"

	capnp "capnproto.org/go/capnp/v3"
)

// TestDoubleReleaseLargeMessage: releasing a large inbound message
// twice must not pool its buffer twice (two later messages would share it).
func TestDoubleReleaseLargeMessage(t *testing.T) {
	a, b := tcpPair(t)
	c := newCodec(b, DefaultMaxMessageSize)
	defer c.Close()
	const n = 100 << 10 // class 128 KiB
	sent := make(chan error, 1)
	go func() {
		enc := capnp.NewEncoder(a)
		for i := range 3 {
			if err := enc.Encode(testMessage(20+i, n)); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	m0, err := c.Decode()
	if err != nil {
		t.Fatal(err)
	}
	m0.Release()
	m0.Release() // a second release
	m1, err := c.Decode()
	if err != nil {
		t.Fatal(err)
	}
	m2, err := c.Decode()
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range []*capnp.Message{m1, m2} {
		p, err := m.Root()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p.Data(), bytes.Repeat([]byte{byte(21 + i)}, n)) {
			t.Errorf("message %d lost its bytes: a buffer was pooled twice", i+1)
		}
	}
	m1.Release()
	m2.Release()
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
}
