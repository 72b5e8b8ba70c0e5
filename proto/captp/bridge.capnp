@0xda42b57f90f4c6b1;
# The CapTP schema vatcar speaks between sidecars.
#
# Restorer is each vat's bootstrap capability: go-capnp serves one bootstrap
# capability per connection and ignores Bootstrap.deprecatedObjectId, so sturdy
# refs are restored by a call on it, which the client pipelines on.
#
# GrpcService is one exported gRPC backend. Nothing here knows the app's protos:
# messages travel as bytes. Every gRPC message is carried as one or more Chunks
# so that no capnp message ever exceeds the peer's decode limit (go-capnp aborts
# the whole connection on an oversize message).

using Go = import "/go.capnp";
$Go.package("captp");
$Go.import("github.com/vatcar/vatcar/proto/captp");

interface Restorer {
  # Restorer turns a sturdy ref's service id into a live capability.
  # Unknown ids fail with "Unknown persistent service ID".
  restore @0 (id :Data) -> (cap :Capability);
}

interface GrpcService {
  # GrpcService is a gRPC server reached over CapTP.

  unary @0 (call :CallHead, request :Data) -> (reply :Reply, rest :Call);
  # unary makes a call whose client sent exactly one request message and
  # half-closed; the request must fit in one capnp message. When the whole
  # response is at hand (headers, at most one message, status) and fits,
  # it comes back in `reply` and `rest` is null: one round trip, and no
  # capability crosses. Otherwise (a server-streaming method, a slow or
  # large response) `reply` is empty and `rest` is the call: the caller
  # attaches a Sink to it to receive the response as for `open`.

  open @1 (call :CallHead, down :Sink) -> (up :Sink);
  # open starts a streaming call (any kind). The caller sends request
  # messages on `up` and receives response headers, messages and the final
  # status on `down`. The caller holds `up` until `down.close` arrives;
  # releasing it earlier cancels the call.
}

interface Call {
  # Call is the caller's handle on a unary call whose response streams.
  # Releasing it before the response's `close` cancels the call.

  attach @0 (down :Sink) -> ();
  # attach gives the call the Sink its response goes to (once).
}

interface Sink {
  # Sink is one direction of a gRPC stream.

  headers @0 (md :List(Header)) -> ();
  # headers delivers response headers (down direction only), as soon as the
  # backend sends them.

  send @1 (chunks :List(Chunk)) -> stream;
  # send delivers a batch of message pieces; capnp stream flow control
  # bounds what is in flight.

  close @2 (status :Status, trailers :List(Header), sends :UInt64) -> ();
  # close ends the direction: on `up` it is the client's half-close (status
  # unset), on `down` it carries the call's final status and trailers.
  # sends is how many send calls the sender made before it; a Sink that got
  # fewer (a send refused on the way, before the Sink saw it) fails the
  # direction instead of ending it whole. 0: not counted (older senders).
}

struct CallHead {
  method @0 :Text;          # full gRPC method name, "/pkg.Service/Method"
  md @1 :List(Header);      # request metadata, including -bin keys
  timeoutNanos @2 :Int64;   # remaining time of the caller's deadline; 0: none
}

struct Header {
  key @0 :Text;
  value @1 :Data;
}

struct Status {
  code @0 :UInt32;          # google.golang.org/grpc/codes
  message @1 :Text;
  details @2 :Data;         # google.rpc.Status bytes (grpc-status-details-bin)
}

struct Chunk {
  data @0 :Data;
  end @1 :Bool;             # true when this chunk completes a gRPC message
}

struct Reply {
  headers @0 :List(Header);
  message @1 :Data;
  hasMessage @2 :Bool;      # false for a call that ended without a response
  status @3 :Status;
  trailers @4 :List(Header);
}
