// Package sidecar is the vatcar daemon: it wires a vat and the gRPC bridge to
// listeners, exports and imports, and serves the admin API, health and metrics.
//
// It owns configuration (file and flags), lifecycle (reload, graceful drain)
// and observability. It does not implement CapTP or the bridge itself.
package sidecar
