package engine_test

import (
	"flag"
	"fmt"
	"os"
	"sync/atomic"
	"testing"

	capnp "capnproto.org/go/capnp/v3"
	"go.uber.org/goleak"
)

var leaks atomic.Int64

func TestMain(m *testing.M) {
	flag.Parse()
	// Leak reports take a stack trace per client and snapshot: not while
	// benchmarks measure.
	if flag.Lookup("test.bench").Value.String() == "" {
		capnp.SetClientLeakFunc(func(msg string) {
			leaks.Add(1)
			fmt.Fprintln(os.Stderr, msg)
		})
	}
	code := m.Run()
	if n := leaks.Load(); n > 0 && code == 0 {
		fmt.Fprintf(os.Stderr, "%d capnp clients leaked\n", n)
		code = 1
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}
