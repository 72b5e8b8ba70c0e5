package bridge

// growStackBytes is how much stack growStack makes room for. A bridged call
// runs on one of the egress's workers (workers.run; a new goroutine when
// none is parked) or one of the ingress server's stream workers
// (streamWorkers; a new goroutine when all are busy), often with a small
// stack, and goes deep: building the capnp call and reading gRPC frames grow
// that stack two or three times, each time copying it
// (runtime.newstack/copystack: 30% of an importing sidecar's CPU at 64
// calls in flight, docs/bench.md). Growing it once at the top, while it
// holds almost nothing, costs one copy of a few hundred bytes. A worker
// keeps the grown stack for its next call until the garbage collector
// shrinks it.
const growStackBytes = 16 << 10

// growNever is never set: it keeps growStack's room from being used, or
// optimised away.
var growNever bool

// growStack grows the calling goroutine's stack to at least growStackBytes
// in one step. It must not be inlined: its frame is what makes the room.
// The frame's size is checked on entry (the runtime grows the stack then if
// it is short), but room is declared in a branch never taken, so it is not
// zeroed: on a stack grown already a call costs 2 ns, not the 100 ns (and,
// on a cold stack, microseconds) of clearing 16 KiB.
//
//go:noinline
func growStack() {
	if growNever {
		var room [growStackBytes]byte
		sink(room[:])
	}
}

// sink keeps room from being optimised away.
//
//go:noinline
func sink([]byte) {}

// drainStackBytes is how much stack growDrainStack makes room for: a
// Sink's drain (sinkHook.drain) starts a burst of calls (on a ping-pong
// stream, each call), and its handler outgrew a new goroutine's stack once
// or twice (6.6% of BenchmarkPairPingPong's CPU when each drain was a new
// goroutine). 8 KiB of room makes a 16 KiB stack, which the handler's path
// (the chunks read, gRPC's SendMsg) fits in and which comes from the
// runtime's per-P stack cache; growStack's 16 KiB makes a 32 KiB stack,
// allocated from the heap under its lock, and cost three times as much per
// drain. Drains run on their owner's parked workers now, whose stacks stay
// grown (the call is then a check of the frame), but a new worker, a pool
// closed, or a stack the garbage collector shrank still needs it
// (BenchmarkSinkPingPong).
const drainStackBytes = 8 << 10

// growDrainStack is growStack with drainStackBytes of room.
//
//go:noinline
func growDrainStack() {
	if growNever {
		var room [drainStackBytes]byte
		sink(room[:])
	}
}
