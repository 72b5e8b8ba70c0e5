// Package sidecar is the vatcar daemon: it wires a vat and the gRPC bridge to
// listeners, exports and imports, and serves the admin API, health and metrics.
//
// A Sidecar is made from a Config (ParseFlags reads the YAML file and the
// flags of `vatcar run` into one; Validate checks it and names the offending
// value of each problem, wrapping ErrConfig). Start listens and exports:
//
//   - each export NAME=TARGET is a gRPC client to TARGET bridged by an egress
//     capability, added to the vat's restorer Table under the id derived from
//     the key and NAME, so its URI is stable across restarts; its cap file is
//     written to the cap dir once the vat listens;
//   - each import is a bridge ingress on a loopback port (or reached through
//     the shared --grpc-listen endpoint, routed by gRPC service name); it
//     connects on the first call, keeps the restored capability while the
//     connection lives, and after a failure fails calls at once with
//     UNAVAILABLE (NOT_FOUND for an unknown id) until a backoff lets the next
//     call try again;
//   - the admin gRPC API (with reflection) listens on a Unix socket in a
//     private directory by default (TCP only when asked), and /healthz,
//     /readyz and /metrics on a health listener of their own (HTTP/1.1 and
//     h2c), which may face the pod network.
//
// Revoke takes an export's id out of the Table and cuts off its calls in
// flight: every call on the revoked ref, live or restored afresh, fails with
// NOT_FOUND. Shutdown drains (not ready, stop accepting, calls in flight
// finish up to the drain timeout); Reload applies a new config's exports, imports and routes
// without touching the unchanged ones. Metrics live in their own registry and
// never carry service ids or URIs; URIs are logged only at debug level.
//
// The package does not implement CapTP, TLS or the gRPC translation (see
// packages vat and bridge), and it reads no signals: the command does.
package sidecar
