// Package engine is vatcar's own Cap'n Proto RPC (CapTP) engine, level 1:
// Bootstrap (with and without a deprecated object id), Call, Return,
// Finish, Release, Resolve, Disembargo and Abort, promise pipelining with
// transforms, embargoes, and Unimplemented answers for level 3 and 4
// messages. It uses go-capnp only for message encoding (capnp.Message and
// the generated std/capnp/rpc code) and for capability plumbing
// (capnp.Client, capnp.ClientHook, capnp.Promise), so generated stubs and
// servers (proto/captp, server.Server) work unchanged on top of it.
//
// One file per protocol concern: conn.go (the connection, its receive loop,
// sending and shutdown), questions.go (calls this side makes), answers.go
// (calls the peer makes), imports.go (the peer's capabilities held here),
// exports.go (capabilities held by the peer), embargo.go (Disembargo),
// bootstrap.go (Bootstrap both ways) and errors.go (exceptions).
//
// # Cost
//
// No goroutine and no timer per call: an outbound call is encoded on the
// caller's goroutine and its cancellation is an AfterCancel (a
// context.AfterFunc but for inbound calls' contexts); an inbound call's
// context lives in its answer (callCtx), and the call is handed to its
// target's RecvCall from the receive loop
// (server.Server queues it on the server's own goroutine); a Finish after a
// Return is written at once (the vat's codec holds it back until the next
// write), and most calls need none (below). A Bootstrap with an object id
// runs the restorer on a goroutine of its own, since a restore may block on
// a loader.
//
// # Finish and noFinishNeeded
//
// A Return whose results hold no capability (the bridge's unary replies
// and Sink.send's empty results) says noFinishNeeded: the answer is dropped
// from the table once the calls queued on it are delivered, before the
// Return is sent (the peer may reuse the id the moment it has the Return),
// and the caller frees the question without a Finish. Never for a Bootstrap's Return (the spec wants its Finish), an
// exception (a call pipelined on it gets that exception, which needs the
// answer kept), canceled, or a Return with any capability-table entry.
// Consequences on the answering side:
//   - a Finish for an id not in the table is ignored: older peers
//     (go-capnp v3.1.0-alpha.2, C++ 0.9, OCaml) finish anyway, and a
//     cancel may cross the Return; either frees the id only after that
//     Finish, so it never names a newer call. Unknown ids are not told
//     apart from ids returned so (that would mean remembering every id
//     until the peer reuses it, which it may never do). A second Finish
//     for an answer still held is a protocol violation.
//   - a call on promisedAnswer(id), or a receiverAnswer(id) capability,
//     for an id not in the table fails (an exception Return, a broken
//     capability) instead of aborting: the peer may have pipelined on the
//     results before their Return reached it, and with no capability in
//     them such a call fails anyway.
//
// On the calling side the question is freed after the pipelining barrier
// of handleReturn, as it was after the Finish: a call pipelined on it
// (promisedAnswer) is encoded before its id can name another question. A
// receiverAnswer(id) descriptor in a call's params is not held back that
// way: a Return handled between the params' description and their send
// frees the id first (before noFinishNeeded too, right after the Finish;
// known, not fixed: the bridge never passes a pipelined promise as a
// parameter). MaxAnswers counts the table, so answers without a Finish to
// wait for stop counting at once.
//
// # Limits
//
// Per connection, every limit fails one call or question with a named
// Overloaded exception and the connection lives (limits.go): a message the
// codec skipped for its size (MessageTooLarge), a call past MaxAnswers
// unfinished, an object-id Bootstrap past MaxRestores running,
// capabilities past MaxImports or MaxExports. The one
// exception: a peer holding twice MaxAnswers answers it never finished has
// its connection closed. Protocol violations abort only their connection,
// with a reason. OnLimit is told of each.
//
// # Locking
//
//   - Conn.mu guards the four tables (questions, answers, imports, exports),
//     the embargoes and the closed state, and every field marked "guarded
//     by c.mu" in the types of this package.
//   - Nothing that may call back into the engine runs under c.mu: no
//     capnp.Client method other than AddRef, no promise resolution, no
//     RecvCall, no Encode. Work found under the lock is done after it is
//     released (release lists, send lists).
//   - callCtx.mu (an inbound call's context) is a leaf: taken under c.mu
//     or none, nothing is called while it is held; a callCtx is cancelled
//     with no lock of the Conn held, since what is registered with it runs
//     then.
//   - Conn.finMu guards the one Finish message sendFinish reuses; it is
//     held while that message is encoded and taken under no other lock.
//   - Messages leave in the order of their Encode calls. The receive loop is
//     the only goroutine that forwards calls arriving from the peer, so the
//     peer's E-order is kept for everything it sends.
//   - Conn.order orders pipelined sends against embargoes: a call sent to a
//     promise (a question not yet returned, a promise import not yet
//     resolved) holds order.RLock from the moment it checks the promise to
//     the end of its Encode; when the promise resolves to a capability on
//     this side, the receive loop marks it resolved under c.mu, then takes
//     and drops order.Lock (every send that saw it unresolved is encoded)
//     before it sends the Disembargo. Later calls go to the embargoed
//     capability, which holds them until the Disembargo comes back.
package engine
