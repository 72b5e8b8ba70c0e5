package bridge

import "testing"

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

// BenchmarkStackGrowth runs a 12 KiB-deep call on a fresh goroutine per
// operation, as the ingress and egress do per call, with and without
// growStack first: "small" grows the stack by copying it several times on
// the way down, "grown" once at the top.
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
}
