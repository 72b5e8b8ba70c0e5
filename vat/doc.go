// Package vat is a CapTP endpoint with its own identity: the Go port of OCaml
// capnp-rpc's Networking.Vat.
//
// A Vat holds a secret key, accepts and makes key-pinned TLS connections to
// other vats over go-capnp's rpc.Conn, names the capabilities it exports with
// capnp:// sturdy ref URIs, and restores them through a Restorer. It knows
// nothing of gRPC: what the exported capabilities are is the caller's business.
package vat
