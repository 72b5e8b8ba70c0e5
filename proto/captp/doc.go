// Package captp is the generated Go code of vatcar's CapTP schema
// (bridge.capnp): the Restorer bootstrap interface and the GrpcService and
// Sink interfaces the bridge speaks. Regenerate with `make generate`.
package captp
