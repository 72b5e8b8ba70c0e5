package bridge

import (
	"context"
	"testing"
	"unsafe"

	"capnproto.org/go/capnp/v3"
)

// deep recurses n frames of about 256 bytes each, like a bridged call going
// down through go-capnp and grpc-go.
//
//go:noinline
func deep(n int) byte {
	var pad [256]byte
	pad[n%len(pad)] = byte(n)
	if n == 0 {
		return pad[0]
	}
	return deep(n-1) + pad[n%len(pad)]
}

// BenchmarkStackGrowth runs a 12 KiB-deep call per operation: on a fresh
// goroutine, as the ingress's calls beyond its stream workers do, without
// growStack ("small": the stack grows by copying several times on the way
// down) and with it ("grown": once at the top); and as the egress runs its
// calls, on its workers ("pooled": a parked worker's stack is grown
// already, unless the garbage collector shrank it).
func BenchmarkStackGrowth(b *testing.B) {
	for _, bc := range []struct {
		name string
		grow bool
	}{{"small", false}, {"grown", true}} {
		b.Run(bc.name, func(b *testing.B) {
			done := make(chan byte)
			for b.Loop() {
				go func() {
					if bc.grow {
						growStack()
					}
					done <- deep(48)
				}()
				<-done
			}
		})
	}
	b.Run("pooled", func(b *testing.B) {
		p := newWorkers()
		defer p.close()
		ctx := context.Background()
		m := serviceMethods[0].Method
		handle := func(*egress, context.Context, *capCall) error { deep(48); return nil }
		for b.Loop() {
			ret := &doneReturner{done: make(chan struct{})}
			startCall(ctx, capnp.Recv{Method: m, ReleaseArgs: func() {}, Returner: ret}, p, nil, handle)
			<-ret.done
		}
	})
}

// TestStackMark checks that stackMark changes when the stack grows, and
// only then.
func TestStackMark(t *testing.T) {
	marks := make(chan [3]uintptr)
	go func() {
		var m [3]uintptr
		for i := range m {
			if i == 2 {
				deep(400) // 100 KiB: more than a new goroutine's stack
			}
			m[i] = stackMark()
		}
		marks <- m
	}()
	m := <-marks
	if m[0] != m[1] {
		t.Errorf("stackMark moved without growth: %#x, %#x", m[0], m[1])
	}
	if m[1] == m[2] {
		t.Errorf("stackMark stayed at %#x after the stack grew", m[1])
	}
}

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

// TestGrowStack: after growStack, a call as deep as a bridged one (deep(48),
// 12 KiB) runs without the stack moving, on a new goroutine (which starts
// with a smaller stack) and again on the same one.
func TestGrowStack(t *testing.T) {
	moved := make(chan [2]bool)
	go func() {
		var m [2]bool
		for i := range m {
			growStack()
			before := stackMark()
			deep(48)
			m[i] = stackMark() != before
		}
		moved <- m
	}()
	if m := <-moved; m[0] || m[1] {
		t.Errorf("the stack moved under a 12 KiB call after growStack (first, second call: %v)", m)
	}
}
