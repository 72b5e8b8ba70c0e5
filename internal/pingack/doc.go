// Package pingack makes an HTTP/2 connection's lone PING acknowledgements
// wait for the connection's next write (or a short delay), so that they do
// not cost a system call and a wake-up of their own.
//
// It only looks at whole writes: it does not parse HTTP/2, and it is no use
// under TLS (wrap the plaintext side). The sidecar holds the acknowledgements
// of its app-facing connections (ingress and backend); the bench's grpc-go
// reference proxy holds those of its h2c sides the same way.
package pingack
