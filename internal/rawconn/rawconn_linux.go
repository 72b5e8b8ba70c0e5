//go:build linux

package rawconn

import (
	"io"
	"net"
	"sync"
	"syscall"
)

// Wrap returns c with raw reads and writes if it is a TCP or Unix stream
// socket, and c itself otherwise.
func Wrap(c net.Conn) net.Conn {
	sc, ok := c.(interface {
		net.Conn
		SyscallConn() (syscall.RawConn, error)
	})
	if !ok {
		return c
	}
	switch c.(type) {
	case *net.TCPConn, *net.UnixConn:
	default:
		return c
	}
	rc, err := sc.SyscallConn()
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

	rmu     sync.Mutex // one Read at a time; guards the read fields
	rbuf    []byte
	rn      int
	rerr    error
	readFn  func(uintptr) bool
	wmu     sync.Mutex // one Write at a time; guards the write fields
	wbuf    []byte
	wn      int
	werr    error
	writeFn func(uintptr) bool
}

// NetConn returns the wrapped connection.
func (c *Conn) NetConn() net.Conn { return c.Conn }

// SyscallConn returns the socket's syscall.RawConn, for socket options.
func (c *Conn) SyscallConn() (syscall.RawConn, error) { return c.rc, nil }

func (c *Conn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.rbuf, c.rn, c.rerr = b, 0, nil
	if err := c.rc.Read(c.readFn); err != nil {
		c.rbuf = nil
		return 0, wrapErr("read", c.Conn, err)
	}
	n, err := c.rn, c.rerr
	c.rbuf = nil
	if err != nil {
		return n, wrapErr("read", c.Conn, err)
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// read is the RawConn.Read callback: false means wait until readable.
func (c *Conn) read(fd uintptr) bool {
	for {
		n, _, errno := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafePointer(c.rbuf)), uintptr(len(c.rbuf)))
		switch errno {
		case 0:
			c.rn = int(n)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		default:
			c.rerr = errno
			return true
		}
	}
}

func (c *Conn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf, c.wn, c.werr = b, 0, nil
	err := c.rc.Write(c.writeFn)
	n := c.wn
	if err == nil {
		err = c.werr
	}
	c.wbuf = nil
	if err != nil {
		return n, wrapErr("write", c.Conn, err)
	}
	return n, nil
}

// write is the RawConn.Write callback: it writes until all of wbuf is
// written (true), the socket is full (false: wait until writable), or an
// error (true, werr set).
func (c *Conn) write(fd uintptr) bool {
	for c.wn < len(c.wbuf) {
		p := c.wbuf[c.wn:]
		if len(p) > maxRawWrite {
			p = p[:maxRawWrite]
		}
		n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafePointer(p)), uintptr(len(p)))
		switch errno {
		case 0:
			c.wn += int(n)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			c.werr = errno
			return true
		}
	}
	return true
}

func wrapErr(op string, c net.Conn, err error) error {
	if _, ok := err.(*net.OpError); ok {
		return err
	}
	return &net.OpError{Op: op, Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
