//go:build linux

package rawconn

import (
	"net"
	"syscall"
)

// SetUserTimeout sets TCP_USER_TIMEOUT on a TCP connection (wrapped or
// not): how long sent data may go unacknowledged before the kernel drops
// the connection. Other connections are left alone.
func SetUserTimeout(c net.Conn, ms int) error {
	if w, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = w.NetConn()
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpUserTimeout, ms)
	}); err != nil {
		return err
	}
	return serr
}

// tcpUserTimeout is TCP_USER_TIMEOUT (linux/tcp.h), which package syscall
// does not name.
const tcpUserTimeout = 0x12
