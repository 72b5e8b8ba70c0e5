package bridge

import "testing"

func TestDirtyPoolSizes(t *testing.T) {
	p := new(dirtyPool)
	for _, tc := range []struct{ size, wantCap int }{
		{0, 256}, {1, 256}, {256, 256}, {257, 4096}, {4096, 4096}, {4097, 16384},
		{16384, 16384}, {20000, 32768}, {32769, 1 << 20}, {1 << 20, 1 << 20}, {1<<20 + 1, 1<<20 + 1},
	} {
		b := p.Get(tc.size)
		if len(*b) != tc.size || cap(*b) != tc.wantCap {
			t.Errorf("Get(%d): len %d cap %d, want len %d cap %d", tc.size, len(*b), cap(*b), tc.size, tc.wantCap)
		}
		p.Put(b)
	}
}

func TestDirtyPoolPutForeign(t *testing.T) {
	p := new(dirtyPool)
	// Buffers Get did not hand out (odd capacities, a class's capacity
	// plus one) must not come back from Get: a later Get of that class
	// would have a capacity it does not promise.
	for _, c := range []int{0, 100, 300, 4095, 1<<20 + 1} {
		b := make([]byte, c)
		p.Put(&b)
	}
	for _, size := range []int{100, 300, 4095} {
		if b := p.Get(size); len(*b) != size || cap(*b)&(cap(*b)-1) != 0 {
			t.Errorf("Get(%d) after foreign Puts: len %d cap %d", size, len(*b), cap(*b))
		}
	}
}

func TestDirtyPoolReuses(t *testing.T) {
	p := new(dirtyPool)
	// sync.Pool may drop what it holds at any GC; a Get right after a Put
	// on the same goroutine normally returns it, so look for reuse over a
	// few tries rather than once.
	for try := 0; try < 100; try++ {
		b := p.Get(1000)
		(*b)[0] = 42
		p.Put(b)
		c := p.Get(1000)
		if c == b {
			if len(*c) != 1000 {
				t.Fatalf("reused buffer has len %d, want 1000", len(*c))
			}
			return
		}
	}
	t.Fatal("the pool never handed back a buffer put into it")
}
