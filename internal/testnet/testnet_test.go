package testnet

import (
	"io"
	"testing"
)

// TestPair: bytes written at either end arrive at the other.
func TestPair(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			a, b := Pair(t, network)
			for _, c := range [][2]any{{a, b}, {b, a}} {
				w, r := c[0].(io.Writer), c[1].(io.Reader)
				if _, err := w.Write([]byte("ping")); err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 4)
				if _, err := io.ReadFull(r, buf); err != nil || string(buf) != "ping" {
					t.Fatalf("read %q, %v; want ping", buf, err)
				}
			}
		})
	}
}
