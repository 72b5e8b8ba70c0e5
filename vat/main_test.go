package vat_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"go.uber.org/goleak"

	"github.com/vatcar/vatcar/proto/captp"
	"github.com/vatcar/vatcar/vat"
)

var leaks atomic.Int64

func TestMain(m *testing.M) {
	flag.Parse()
	// The leak check records a stack for every client, which would swamp
	// what benchmarks measure; tests always run with it.
	if f := flag.Lookup("test.bench"); f == nil || f.Value.String() == "" {
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

// echo is a test capability: its unary method answers with its name and
// the request, in the reply status's message.
type echo struct {
	name  string
	calls atomic.Int64
	block chan struct{} // if not nil, calls wait for it to close
}

func (e *echo) Unary(ctx context.Context, call captp.GrpcService_unary) error {
	e.calls.Add(1)
	call.Go()
	if e.block != nil {
		select {
		case <-e.block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	req, err := call.Args().Request()
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	reply, err := res.NewReply()
	if err != nil {
		return err
	}
	st, err := reply.NewStatus()
	if err != nil {
		return err
	}
	return st.SetMessage_(e.name + ":" + string(req))
}

func (e *echo) Open(context.Context, captp.GrpcService_open) error {
	return errors.New("open: not implemented by the test echo")
}

func newEcho(name string) (*echo, capnp.Client) {
	e := &echo{name: name}
	return e, capnp.Client(captp.GrpcService_ServerToClient(e))
}

// call makes one unary call on c and returns the reply's status message.
func call(ctx context.Context, c capnp.Client, request string) (string, error) {
	fut, release := captp.GrpcService(c).Unary(ctx, func(p captp.GrpcService_unary_Params) error {
		return p.SetRequest([]byte(request))
	})
	defer release()
	res, err := fut.Struct()
	if err != nil {
		return "", err
	}
	reply, err := res.Reply()
	if err != nil {
		return "", err
	}
	st, err := reply.Status()
	if err != nil {
		return "", err
	}
	return st.Message_()
}

// startVat makes a vat listening on addr ("" = TCP on 127.0.0.1:0) and
// serving until the test ends.
func startVat(t testing.TB, cfg vat.Config) *vat.Vat {
	t.Helper()
	if cfg.ListenAddress == "" {
		cfg.ListenAddress = "tcp:127.0.0.1:0"
	}
	v, err := vat.New(cfg)
	if err != nil {
		t.Fatalf("vat.New: %v", err)
	}
	l, err := v.Listen()
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- v.Serve(context.Background(), l) }()
	t.Cleanup(func() {
		if err := v.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return v
}

// unixAddress returns a unix: listen address in a temporary directory.
func unixAddress(t testing.TB, name string) string {
	dir, err := os.MkdirTemp("", "vat")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return "unix:" + filepath.Join(dir, name+".sock")
}

// waitFor polls cond until it holds or 10 s pass.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second) // generous: CI machines may be busy
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}
