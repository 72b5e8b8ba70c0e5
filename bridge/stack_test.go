package bridge

import (
	"context"
	"testing"

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
