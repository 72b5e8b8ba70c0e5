// Package bridge translates gRPC calls to CapTP calls and back.
//
// An Ingress is the gRPC server side: it accepts every method with a raw
// bytes codec (payloads are never parsed, whatever the content-subtype) and
// forwards each call to the GrpcService capability its Director picks. An
// egress (NewEgress) is the capability side: a GrpcService that forwards
// each call to a grpc.ClientConnInterface, normally the local app's server.
// Between the two the call travels as described in
// proto/captp/bridge.capnp, and metadata (including -bin keys and trace
// headers), deadlines (as the remaining timeout), cancellation in both
// directions, half-close, response headers (sent as soon as the backend
// sends them), status code, message and details, and trailers cross intact.
//
// The package knows nothing of keys, vats, sturdy refs or config files: it
// works on any go-capnp connection. Wiring it to vats and listeners is the
// sidecar's job.
//
// # Using it
//
// Ingress side:
//
//	in, err := bridge.NewIngress(bridge.IngressConfig{
//		Director: func(ctx context.Context, method string) (captp.GrpcService, error) {
//			return svc.AddRef(), nil // the ingress releases it when the call ends
//		},
//		MaxMessageSize: 64 << 20,
//	})
//	srv := in.NewServer(grpc.InTapHandle(in.TapHandle(nil)), grpc.StatsHandler(myStats)) // or grpc.NewServer(append(in.ServerOptions(), ...)...)
//	srv.Serve(listener)
//	// once srv has stopped:
//	in.Close() // ends the goroutines it keeps parked for streams
//
// Egress side:
//
//	svc, err := bridge.NewEgress(bridge.EgressConfig{Conn: appConn, MaxConcurrentCalls: 256})
//	// export svc (e.g. as a Restorer entry); release it when done.
//
// Either side may be told the methods' kinds, which speeds up unary calls
// (each side's gain is its own; neither needs the other to know them):
//
//	kinds, err := bridge.ParseKinds(descriptorSet) // protoc --descriptor_set_out
//	in, err := bridge.NewIngress(bridge.IngressConfig{Director: dir, Kinds: kinds})
//	svc, err := bridge.NewEgress(bridge.EgressConfig{Conn: appConn, Kinds: kinds})
//
// Errors crossing the bridge all go through Status, which maps capnp
// exceptions (Disconnected -> UNAVAILABLE, Overloaded -> RESOURCE_EXHAUSTED,
// Unimplemented -> UNIMPLEMENTED, "Unknown persistent service ID" ->
// NOT_FOUND) and keeps gRPC statuses as they are.
//
// # How a call travels
//
// A call to a method the config's Kinds (see ParseKinds) know to be unary
// takes a fast path: the ingress reads the request on the call's own
// goroutine and makes one GrpcService.unary call; the egress makes the
// backend call on the capnp call's goroutine and, when the response is
// whole and fits, answers in the reply. A request or response too large for
// a unary call, or a second message (the Kinds were wrong), continues on the
// general path with what was read, so a wrong entry loses no message. (Like
// grpc-go's own unary server, the ingress waits for the client's
// half-close: a bidi client that waits for an answer before half-closing a
// method declared unary waits for its deadline.) Without Kinds (nil, the default) every call takes the
// general path, described next.
//
// On the general path the ingress starts reading the client's messages at
// once. If the client turns out to have sent exactly one message and
// half-closed (every unary and server-streaming call from a usual client),
// the call is one GrpcService.unary capnp call; when the backend's whole response is at hand
// by the time its first part arrives and fits, it comes back in the reply:
// one round trip, no capability crossing. Otherwise the reply hands back a
// Call, to which the ingress attaches a Sink the response streams back on.
// Every other call uses GrpcService.open and two Sinks, one per direction.
//
// Sinks carry batches: the first message goes out at once and the messages
// that queue while a send is being made ride in the next one (never a
// timer). Sends are capnp `-> stream` calls under a fixed flow window, and
// each direction queues at most a few MiB, so a fast sender facing a slow
// receiver blocks instead of buffering. Messages larger than 1 MiB travel in
// chunks and one capnp message carries at most 1 MiB of them, below the
// vat's decode limit (the sidecar's is MaxMessageSize plus room for
// metadata; a capnp message over it fails its call alone); MaxMessageSize bounds a reassembled message, and a larger one
// fails its call alone with RESOURCE_EXHAUSTED.
//
// Buffer ownership: a message read from gRPC is kept in gRPC's own buffers
// and copied once, into the capnp message that carries it. A message read
// from capnp is copied once, into pooled buffers that gRPC frees after
// writing them (grpc-go keeps a reference after SendMsg returns, and capnp
// memory goes back when its call returns, so it is never handed to gRPC).
//
// Compression is per hop: the ingress accepts gzip-compressed messages (the
// package registers grpc-go's gzip compressor) and the bridge carries them
// uncompressed; the egress compresses only if EgressConfig.CallOptions say
// so.
//
// The egress admits at most MaxConcurrentCalls calls at once per caller
// (EgressConfig.CallerKey, typically the CapTP connection; without one, for
// all calls together) and MaxTotalCalls for all callers, and answers more
// with an Overloaded exception (RESOURCE_EXHAUSTED at the client). A caller
// under its fair share of MaxTotalCalls is always admitted. Slots does the
// counting, and also serves to share an import's calls among its apps.
//
// An ingress's calls on a streaming path that carry nothing for
// IngressConfig.StreamIdleTimeout end with DEADLINE_EXCEEDED, as an
// egress's streams do with EgressConfig.StreamIdleTimeout.
package bridge
