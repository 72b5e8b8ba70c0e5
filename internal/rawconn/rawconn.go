// Package rawconn makes a stream socket's reads and writes without the Go
// runtime's system-call bookkeeping.
//
// A read or write on a net.Conn enters a system call the way any blocking
// call does: the runtime marks the goroutine's P as in a system call, wakes
// its sysmon thread if it sleeps, and if the call lasts past a sysmon tick
// (20 us; a loopback write runs the receiver's TCP stack and wakes it,
// often longer) hands the P to another thread, which the returning thread
// must then take back. With one P (a sidecar's --cpus 1) and one call in
// flight, that is a futex wake-up and a thread switch or two per message.
// On Linux, Conn instead makes each read and write as a raw recvfrom or
// sendto with MSG_DONTWAIT (never waiting in the kernel, whatever the
// descriptor's flags) from a syscall.RawConn callback, and waits for
// readiness in the runtime's poller exactly as net.Conn does: deadlines
// and Close work as before.
//
// Elsewhere, and in race-detector builds (the race detector learns of
// socket I/O only through the syscall package's ordinary calls), Wrap
// returns the connection unchanged; Enabled says which.
package rawconn
