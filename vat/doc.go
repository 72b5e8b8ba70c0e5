// Package vat is a CapTP endpoint with its own identity: the Go port of OCaml
// capnp-rpc's Networking.Vat, on vatcar's own CapTP engine (vat/engine).
//
// A Vat holds a secret key, accepts and makes key-pinned TLS connections to
// other vats, names the capabilities it exports with capnp:// sturdy ref URIs
// (in OCaml capnp-rpc's format), and restores them through a Restorer. It
// does not know what the capabilities are (nothing here knows gRPC), does no
// third-party handoff, and keeps no state across restarts other than what
// the key file gives (the digest, and ids made with DeriveID).
//
// # Using it
//
//	key, err := vat.LoadOrCreateKey("vat.pem")      // or Config.KeyFile
//	table := vat.NewTable(nil)                      // the Restorer
//	v, err := vat.New(vat.Config{Key: key, ListenAddress: "tcp:0.0.0.0:7000",
//		PublicAddress: "tcp:svc.example:7000", Restorer: table})
//	l, err := v.Listen()                            // binds; a port 0 is resolved
//	go v.Serve(ctx, l)                              // or v.ListenAndServe(ctx)
//	defer v.Close()                                 // the seed's switch
//
//	id := v.DeriveID("my-service")                  // or vat.GenerateID()
//	table.Add(id, capability)                       // Remove(id) revokes
//	uri, err := v.SturdyURI(id)                     // capnp://sha-256:...@svc.example:7000/...
//	err = vat.SaveCapFile("my-service.cap", uri)
//
//	ref, err := v.Import(uri)                       // or "@my-service.cap"
//	c, err := ref.Connect(ctx)                      // a live capnp.Client; Release it
//
// # Connections
//
// There is one connection per peer vat, found by the digest of the peer's
// key, whichever side dialled it. Concurrent Connects to one peer share one
// dial. When both vats dial each other at once, the crossed-connection rule
// keeps the connection initiated by the vat with the greater digest (see
// AddConnection); capabilities obtained over the losing one break, so a
// caller may retry once. A connection that is ending is waited out before a
// new dial, and a peer whose connection died is dialled again by the next
// Connect: calling Connect again is how a client recovers after a peer
// restarts. Sockets get TCP_NODELAY and keepalive.
//
// Keepalive does not notice a peer whose process is stopped (its kernel
// still acknowledges), so each connection also has a heartbeat: after every
// Config.HeartbeatInterval (15 s) in which nothing arrived from the peer,
// the vat restores the empty id on the peer's Restorer, a cheap round trip
// answered "Unknown persistent service ID" (not passed to the Restorer or
// to the log; counted by OnRestore as RestoreEmpty, so a flood of them
// shows). When neither the answer nor any other bytes
// come within Config.HeartbeatTimeout (10 s), the connection is closed: its
// capabilities break as disconnected and the next Connect dials again.
//
// Connect waits for the peer's answer to the restore (one round trip on an
// open connection) so that an unknown id is reported by Connect itself; the
// capability it returns is then a plain import, with no promise to resolve.
//
// # Identity and URIs
//
// A vat's Digest is the SHA-256 of its public key's DER SubjectPublicKeyInfo.
// URIs are capnp://sha-256:<digest>@<host>:<port>/<service-id>, the Unix form
// capnp://sha-256:<digest>@/abs/path/<service-id>, and, with Config.Insecure,
// capnp://insecure@<host>:<port>/<service-id>; digest and id are unpadded
// base64url. TLS is 1.3 with self-signed certificates (CN "capnp"); the
// dialler accepts only the key the URI names (else ErrKeyMismatch, naming
// both digests), and the server accepts any client and records its digest as
// the peer's identity.
//
// # Restoring and limits
//
// Each connection's bootstrap capability is a captp.Restorer whose restore
// calls the vat's Restorer. Restores and the calls on the capabilities it
// hands out are counted: over Config.MaxConcurrentCalls running at once on
// one connection, a call fails at once with an exception of type Overloaded. (Calls on capabilities
// passed back from those, such as stream sinks, are not counted.) An
// inbound message over 1 MiB is buffered as its bytes arrive, not at the
// size its header claims, and must complete within 10 s plus its size at
// 1 MiB/s. Limits fail one call and the connection lives: a message over
// Config.MaxMessageSize is skipped unbuffered and fails the call it carries
// (or the question it answers) with an Overloaded exception, as does a call
// past Config.MaxAnswers (32768) unfinished; Config.OnLimit is told. A peer holding twice MaxAnswers
// answers, or reading nothing for Config.WriteStallTimeout (15 s) while
// messages wait for it, has its connection closed, and OnRefused is told
// (RefusedAnswerBudget, RefusedSendQueue).
//
// Serve holds at most Config.MaxConnections (1024) inbound connections at
// once, those in their handshake included. One more takes the slot of the
// oldest connection that restored nothing (either way) within
// Config.StrangerGrace (3 s) of its accept, else of the newest connection of
// a key holding more than an equal share of the slots; failing both it is
// closed at once. Evictions are reported to OnRefused (RefusedIdle,
// RefusedKeyShare). A
// TLS handshake must finish within Config.HandshakeTimeout, and on an
// insecure vat, where there is no handshake, an accepted connection's first
// message must arrive within it. Refused connections (over the limit, or a
// failed handshake) are logged at most once a second (warn and info) and
// reported to Config.OnRefused.
//
// # Errors
//
// Sentinels are in errors.go. Connect's errors satisfy IsUnknownService,
// IsNoRestorer or IsDisconnected (and errors.Is with the matching sentinel);
// the first two also recognise the exceptions "Unknown persistent service
// ID" and "This vat has no restorer" as they arrive from a peer, and
// IsOverloaded recognises the Overloaded exception. Calls on a capability
// revoked by Table.Remove fail with a message containing ErrRevoked's text.
//
// # Observing
//
// Config.OnConnection and Config.OnRestore are called on connection changes
// and restores, for metrics; nil means no call. Stats, Peers and Connections
// give snapshots, and Dump a human-readable report. Service ids never appear
// in logs or errors: ServiceID.String prints a short hash.
//
// Vat, Table, Key and SturdyRef are safe for concurrent use.
package vat
