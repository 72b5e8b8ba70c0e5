//go:build !linux || race

package rawconn

import "net"

// Enabled reports whether Wrap wraps: not on this platform or build.
const Enabled = false

// Wrap returns c: raw system calls are made on Linux only, and not in
// race-detector builds.
func Wrap(c net.Conn) net.Conn { return c }
