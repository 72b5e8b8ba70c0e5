// Package rawconn makes a socket's reads and writes without the Go
// runtime's system-call bookkeeping.
//
// A read or write on a net.Conn enters a system call the way any blocking
// call does: the runtime marks the goroutine's P as in a system call, wakes
// its sysmon thread if it sleeps, and if the call lasts past a sysmon tick
// (20 us; a loopback write runs the receiver's TCP stack and wakes it,
// often longer) hands the P to another thread, which the returning thread
// must then take back. With one P (a sidecar's --cpus 1) and one call in
// flight, that is a futex wake-up and a thread switch or two per message.
// The sockets are non-blocking, so a read or write never waits in the
// kernel: Conn makes them as raw system calls through syscall.RawConn, and
// waits for readiness in the runtime's poller exactly as net.Conn does
// (deadlines and Close work as before).
package rawconn

import "net"

// maxRawWrite bounds one raw write: the kernel copies what fits into the
// socket buffer while the P waits, so a huge write is made in steps.
const maxRawWrite = 256 << 10

// Listener wraps each accepted connection with Wrap.
type Listener struct{ net.Listener }

// Accept returns the next connection, wrapped.
func (l Listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return Wrap(c), nil
}
