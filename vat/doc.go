// Package vat is a CapTP endpoint with its own identity: the Go port of OCaml
// capnp-rpc's Networking.Vat on go-capnp's rpc.Conn.
//
// A Vat holds a secret key, accepts and makes key-pinned TLS connections to
// other vats, names the capabilities it exports with capnp:// sturdy ref URIs
// (in OCaml capnp-rpc's format), and restores them through a Restorer. It
// knows nothing of gRPC: what the exported capabilities are is the caller's
// business.
//
// # Using it
//
//	key, err := vat.LoadOrCreateKey("vat.pem")      // or Config.KeyFile
//	table := vat.NewTable(nil)                      // the Restorer
//	v, err := vat.New(vat.Config{Key: key, ListenAddress: "tcp:0.0.0.0:7000",
//		PublicAddress: "tcp:svc.example:7000", Restorer: table})
//	l, err := v.Listen()                            // binds; port 0 is resolved
//	go v.Serve(ctx, l)
//	defer v.Close()
//
//	id := v.DeriveID("my-service")                  // or vat.GenerateID()
//	table.Add(id, capability)                       // Remove(id) revokes
//	uri, err := v.SturdyURI(id)                     // capnp://sha-256:...@svc.example:7000/...
//	vat.SaveCapFile("my-service.cap", uri)
//
//	ref, err := v.Import(uri)                       // or "@my-service.cap"
//	c, err := ref.Connect(ctx)                      // live capnp.Client; Release it
//
// Connect reuses the one connection per peer vat (inbound or outbound), waits
// out a connection being torn down, and re-dials a peer whose connection died:
// calling Connect again is how a client recovers after a peer restarts.
//
// # Identity and URIs
//
// A vat's Digest is the SHA-256 of its public key's DER SubjectPublicKeyInfo.
// URIs are capnp://sha-256:<digest>@<host>:<port>/<service-id>, the Unix form
// capnp://sha-256:<digest>@/abs/path/<service-id>, and, with Config.Insecure,
// capnp://insecure@<host>:<port>/<service-id>; digest and id are unpadded
// base64url. TLS is 1.3 with self-signed certificates (CN "capnp"); the
// dialler accepts only the key the URI names (else ErrKeyMismatch), the
// server accepts any client and records its digest as the peer's identity.
//
// # Errors
//
// Sentinels are in errors.go. Connect's errors satisfy IsUnknownService,
// IsNoRestorer or IsDisconnected; the first two also recognise the exceptions
// ("Unknown persistent service ID", "This vat has no restorer") as they arrive
// from a peer, and IsOverloaded recognises the Overloaded exception of calls
// over Config.MaxConcurrentCalls.
//
// # Hooks
//
// Config.OnConnection and Config.OnRestore are called on connection changes
// and restores, for metrics; nil means no call.
package vat
