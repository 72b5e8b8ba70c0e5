package bridge

import "unsafe"

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
// shrinks it; the egress's workers skip growStack while their stack has not
// moved (stackMark), which saves zeroing the 16 KiB frame per call.
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

// stackMark returns the address of a variable in its own frame: called
// twice from one place in a function, it returns the same value unless the
// goroutine's stack moved in between (the runtime grew or shrank it by
// copying it elsewhere).
//
//go:noinline
func stackMark() uintptr {
	var mark byte
	return uintptr(unsafe.Pointer(&mark))
}
