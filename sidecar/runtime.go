package sidecar

import (
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
)

// Runtime defaults of `vatcar run`, used only when the environment does not
// set GOGC or GOMEMLIMIT: the garbage collector runs at half its default
// frequency (measured 9-16% less time per bridged call, docs/bench.md), and a
// soft memory limit makes it collect harder before the heap that trades for
// grows past DefaultMemoryLimit.
const (
	DefaultGCPercent   = 200
	DefaultMemoryLimit = 512 << 20
)

// TuneRuntime applies cfg.CPUs (GOMAXPROCS; DefaultCPUs unless the
// environment sets GOMAXPROCS) and the garbage collector defaults the
// environment leaves unset. It changes the whole process, so `vatcar run`
// calls it, not New: a program embedding several Sidecars decides for
// itself.
func TuneRuntime(cfg Config) {
	switch {
	case cfg.CPUs > 0:
		runtime.GOMAXPROCS(cfg.CPUs)
	case !validProcs(os.Getenv("GOMAXPROCS")):
		// Unset, or a value the runtime ignored (it then runs on every
		// CPU): the default applies.
		runtime.GOMAXPROCS(DefaultCPUs)
	}
	if _, ok := os.LookupEnv("GOGC"); !ok {
		debug.SetGCPercent(DefaultGCPercent)
	}
	if _, ok := os.LookupEnv("GOMEMLIMIT"); !ok {
		debug.SetMemoryLimit(DefaultMemoryLimit)
	}
}

// validProcs reports whether the runtime took s as GOMAXPROCS: a positive
// integer.
func validProcs(s string) bool {
	n, err := strconv.Atoi(s)
	return err == nil && n > 0
}
