package cputime

import (
	"testing"
	"time"
)

// TestMeterCountsWork checks that busy work shows up as CPU time, per op.
func TestMeterCountsWork(t *testing.T) {
	m := Start()
	x := 0
	for end := time.Now().Add(50 * time.Millisecond); time.Now().Before(end); {
		x++
	}
	if got := m.MicrosPer(1); got <= 0 || x == 0 {
		t.Errorf("MicrosPer(1) = %v after 50 ms of busy work, want > 0", got)
	}
	if total, half := m.MicrosPer(1), m.MicrosPer(2); half <= 0 || half > total {
		t.Errorf("MicrosPer(2) = %v, MicrosPer(1) = %v: want about half", half, total)
	}
}
