//go:build !linux

package rawconn

import "net"

// SetUserTimeout sets TCP_USER_TIMEOUT on Linux; elsewhere it does nothing.
func SetUserTimeout(net.Conn, int) error { return nil }
