// Package testnet connects stream sockets on loopback for tests.
package testnet

import (
	"net"
	"path/filepath"
	"testing"
)

// Pair returns both ends of a connected stream socket: network "tcp" on
// 127.0.0.1, or "unix" in a temporary directory of tb. Both ends close
// when the test ends.
func Pair(tb testing.TB, network string) (dialled, accepted net.Conn) {
	tb.Helper()
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(tb.TempDir(), "s")
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	got := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			tb.Error(err)
		}
		got <- c
	}()
	dialled, err = net.Dial(network, ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { dialled.Close() })
	accepted = <-got
	if accepted == nil {
		tb.FailNow()
	}
	tb.Cleanup(func() { accepted.Close() })
	return dialled, accepted
}
