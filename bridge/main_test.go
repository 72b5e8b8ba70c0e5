package bridge

import (
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/grpclog"
)

func TestMain(m *testing.M) {
	// The interop suite reports failures with grpclog's Fatal, which exits
	// the process; panicking instead lets runInterop turn them into test
	// failures.
	grpclog.SetLoggerV2(fatalPanics{})
	goleak.VerifyTestMain(sinksShutDown{m})
}

// sinksShutDown fails the package if a Sink was never shut down once every
// test has ended: idle Sinks hold no goroutine, so goleak cannot see one
// leak (liveSinks counts them).
type sinksShutDown struct{ m *testing.M }

func (s sinksShutDown) Run() int {
	code := s.m.Run()
	deadline := time.Now().Add(30 * time.Second)
	for liveSinks.Load() != 0 && time.Now().Before(deadline) { // poll: shutdowns run on goroutines
		runtime.Gosched()
	}
	if n := liveSinks.Load(); n != 0 {
		fmt.Fprintf(os.Stderr, "%d Sinks never shut down\n", n)
		return 1
	}
	return code
}

// fatalPanic is what fatalPanics panics with.
type fatalPanic struct{ msg string }

// fatalPanics is a grpclog.LoggerV2 that drops logs below error, prints
// errors, and panics on Fatal.
type fatalPanics struct{}

func (fatalPanics) Info(...any)             {}
func (fatalPanics) Infoln(...any)           {}
func (fatalPanics) Infof(string, ...any)    {}
func (fatalPanics) Warning(...any)          {}
func (fatalPanics) Warningln(...any)        {}
func (fatalPanics) Warningf(string, ...any) {}
func (fatalPanics) Error(args ...any)       { fmt.Fprintln(os.Stderr, args...) }
func (fatalPanics) Errorln(args ...any)     { fmt.Fprintln(os.Stderr, args...) }
func (fatalPanics) Errorf(f string, args ...any) {
	fmt.Fprintf(os.Stderr, f+"\n", args...)
}
func (fatalPanics) Fatal(args ...any)   { panic(fatalPanic{fmt.Sprint(args...)}) }
func (fatalPanics) Fatalln(args ...any) { panic(fatalPanic{fmt.Sprint(args...)}) }
func (fatalPanics) Fatalf(f string, args ...any) {
	panic(fatalPanic{fmt.Sprintf(f, args...)})
}
func (fatalPanics) V(int) bool { return false }

var _ grpclog.LoggerV2 = fatalPanics{}
