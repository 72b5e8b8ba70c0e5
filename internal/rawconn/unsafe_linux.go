//go:build linux

package rawconn

import "unsafe"

// unsafePointer is the address of b's first byte; b is not empty.
func unsafePointer(b []byte) unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(b)) }
