//go:build linux && !race

package rawconn

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// Enabled reports whether Wrap wraps stream sockets.
const Enabled = true

// maxRawWrite bounds one raw write. The kernel copies what fits into the
// socket buffer while the goroutine holds its P and cannot be preempted,
// so a large Write is made in steps, each a RawConn callback of its own
// (a preemption point between them).
const maxRawWrite = 256 << 10

// Wrap returns c with raw reads and writes if it is a TCP or Unix stream
// socket, and c itself otherwise.
func Wrap(c net.Conn) net.Conn {
	switch c.(type) {
	case *net.TCPConn, *net.UnixConn:
	default:
		return c
	}
	switch c.LocalAddr().Network() {
	case "tcp", "tcp4", "tcp6", "unix":
	default:
		return c // datagram and seqpacket sockets keep message boundaries
	}
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return c
	}
	conn := &Conn{Conn: c, rc: rc}
	conn.readFn, conn.writeFn = conn.read, conn.write
	return conn
}

// Conn is a net.Conn whose Read and Write are raw system calls. Other
// methods are the wrapped connection's.
type Conn struct {
	net.Conn
	rc syscall.RawConn

	rmu    sync.Mutex // one Read at a time; guards the read fields
	rbuf   []byte
	rn     int
	rerr   error
	readFn func(uintptr) bool

	wmu     sync.Mutex // one Write at a time; guards the write fields
	wbuf    []byte     // the part of the current step not yet written
	wn      int
	werr    error
	writeFn func(uintptr) bool
}

// NetConn returns the wrapped connection.
func (c *Conn) NetConn() net.Conn { return c.Conn }

// SyscallConn returns the socket's syscall.RawConn, for socket options.
func (c *Conn) SyscallConn() (syscall.RawConn, error) { return c.rc, nil }

func (c *Conn) Read(b []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.rbuf, c.rn, c.rerr = b, 0, nil
	err := c.rc.Read(c.readFn)
	n := c.rn
	if err == nil {
		err = c.rerr
	}
	c.rbuf = nil
	switch {
	case err != nil:
		return n, c.opError("read", err)
	case n == 0 && len(b) > 0:
		return 0, io.EOF
	}
	return n, nil
}

// read is the RawConn.Read callback: false means wait until readable.
func (c *Conn) read(fd uintptr) bool {
	if len(c.rbuf) == 0 {
		return true // like net: a closed connection still fails
	}
	for {
		n, _, errno := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd,
			uintptr(unsafe.Pointer(unsafe.SliceData(c.rbuf))), uintptr(len(c.rbuf)),
			syscall.MSG_DONTWAIT, 0, 0)
		switch errno {
		case 0:
			c.rn = min(int(n), len(c.rbuf))
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		default:
			c.rerr = os.NewSyscallError("recvfrom", errno)
			return true
		}
	}
}

func (c *Conn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	total := 0
	for {
		step := b[total:]
		if len(step) > maxRawWrite {
			step = step[:maxRawWrite]
		}
		c.wbuf, c.wn, c.werr = step, 0, nil
		err := c.rc.Write(c.writeFn)
		total += c.wn
		if err == nil {
			err = c.werr
		}
		c.wbuf = nil
		if err != nil {
			return total, c.opError("write", err)
		}
		if total == len(b) {
			return total, nil
		}
	}
}

// write is the RawConn.Write callback: it writes until all of wbuf is
// written (true), the socket is full (false: wait until writable), or an
// error (true, werr set).
func (c *Conn) write(fd uintptr) bool {
	for c.wn < len(c.wbuf) {
		p := c.wbuf[c.wn:]
		n, _, errno := syscall.RawSyscall6(syscall.SYS_SENDTO, fd,
			uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)),
			syscall.MSG_DONTWAIT|syscall.MSG_NOSIGNAL, 0, 0)
		switch {
		case errno == syscall.EINTR:
		case errno == syscall.EAGAIN:
			return false
		case errno != 0:
			c.werr = os.NewSyscallError("sendto", errno)
			return true
		case n == 0 || int(n) > len(p):
			c.werr = io.ErrUnexpectedEOF // as internal/poll reports a write of nothing
			return true
		default:
			c.wn += int(n)
		}
	}
	return true
}

// opError wraps err as net does: a *net.OpError naming op and both ends.
// The poller's errors (net.ErrClosed, os.ErrDeadlineExceeded) come from
// RawConn inside an OpError of its own; their cause is kept.
func (c *Conn) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok {
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
