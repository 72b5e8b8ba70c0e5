package bridge

// growStackBytes is how much stack growStack makes room for. A bridged call
// runs on a goroutine that the egress's dispatcher starts for it, or one of the
// ingress server's stream workers (streamWorkers; a new goroutine when all
// are busy), often with a small stack, and goes deep: building the capnp call and
// reading gRPC frames grow that stack two or three times, each time copying
// it (runtime.newstack/copystack: 30% of an importing sidecar's CPU at 64
// calls in flight, docs/bench.md). Growing it once at the top, while it
// holds almost nothing, costs one copy of a few hundred bytes; the stack
// goes back to the runtime's pool when the goroutine ends (an ingress
// stream worker keeps it for its next call).
const growStackBytes = 16 << 10

// growStack grows the calling goroutine's stack to at least growStackBytes
// in one step. It must not be inlined: its frame is what makes the room.
//
//go:noinline
func growStack() {
	var room [growStackBytes]byte
	sink(room[:])
}

// sink keeps room from being optimised away.
//
//go:noinline
func sink([]byte) {}
