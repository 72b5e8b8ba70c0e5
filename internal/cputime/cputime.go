// Package cputime reads the CPU time this process has used, for benchmarks
// that report CPU per operation rather than wall-clock time alone.
package cputime

import (
	"syscall"
	"time"
)

// Process returns the user plus system CPU time this process has used, 0 if
// the kernel does not say.
func Process() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Meter measures the CPU time used from Start on.
type Meter struct{ start time.Duration }

// Start starts a Meter.
func Start() Meter { return Meter{start: Process()} }

// MicrosPer returns the CPU time used since Start in microseconds per op,
// for testing.B.ReportMetric.
func (m Meter) MicrosPer(ops float64) float64 {
	return float64((Process() - m.start).Nanoseconds()) / 1e3 / ops
}
