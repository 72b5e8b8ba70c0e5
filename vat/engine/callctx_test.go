package engine_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/vatcar/vatcar/proto/captp"
	"github.com/vatcar/vatcar/vat/engine"
)

type baseKey struct{}
type wrapKey struct{}

// callReport is what a watcher's handler saw of its context.
type callReport struct {
	value, wrappedValue any
	err, cause          error
	stopped             bool // a registration stopped before the end said so
	stoppedRan          bool // and ran anyway
}

// watcher is a GrpcService whose unary handler watches its context every
// way a handler can: context.AfterFunc on it, AfterCancel and a child
// context on it wrapped by a value; it reports once all of them fired.
type watcher struct {
	started chan struct{} // one value per call, once it watches
	report  chan callReport
}

func (w *watcher) Unary(ctx context.Context, call captp.GrpcService_unary) error {
	call.Go()
	wrapped := context.WithValue(ctx, wrapKey{}, "w")
	fired := make(chan struct{}, 2)
	stop := context.AfterFunc(ctx, func() { fired <- struct{}{} })
	defer stop()
	watch := engine.AfterCancel(wrapped, func() { fired <- struct{}{} })
	defer watch.Stop()
	child, cancelChild := context.WithCancel(wrapped)
	defer cancelChild()
	var ran atomic.Bool
	stopped := engine.AfterCancel(wrapped, func() { ran.Store(true) }).Stop()
	w.started <- struct{}{}

	timeout := time.After(30 * time.Second)
	for range 2 {
		select {
		case <-fired:
		case <-timeout:
			return errors.New("the call's context was not cancelled")
		}
	}
	select {
	case <-child.Done():
	case <-timeout:
		return errors.New("the child context was not cancelled")
	}
	w.report <- callReport{
		value:        ctx.Value(baseKey{}),
		wrappedValue: child.Value(baseKey{}),
		err:          ctx.Err(),
		cause:        context.Cause(child),
		stopped:      stopped,
		stoppedRan:   ran.Load(),
	}
	return ctx.Err()
}

func (w *watcher) Open(context.Context, captp.GrpcService_open) error {
	return errors.New("not implemented")
}

// TestCallContextEnds: however an inbound call ends before its Return (the
// caller's Finish, the connection's close, the end of its BaseContext),
// its context is cancelled, and so is everything registered with it or
// made from it; its values are the BaseContext's. A call that arrives
// after the BaseContext ended starts cancelled.
func TestCallContextEnds(t *testing.T) {
	for _, how := range []string{"finish", "close", "base", "base-before"} {
		t.Run(how, func(t *testing.T) {
			ctx := ctxT(t)
			w := &watcher{started: make(chan struct{}, 1), report: make(chan callReport, 1)}
			base, endBase := context.WithCancel(context.WithValue(context.Background(), baseKey{}, "base"))
			defer endBase()
			a, b := tcpPair(t)
			sc, srv := enginePeer(b, engine.Options{
				Bootstrap:   capnp.Client(captp.GrpcService_ServerToClient(w)),
				BaseContext: base,
			})
			defer srv.close()
			ec, cl := enginePeer(a, engine.Options{})
			defer cl.close()
			g := captp.GrpcService(ec.Bootstrap(ctx))
			defer g.Release()
			if how == "base-before" {
				endBase()
			}
			cctx, cancel := context.WithCancel(ctx)
			defer cancel()
			fut, rel := g.Unary(cctx, withMethod("watch"))
			defer rel()
			select {
			case <-w.started:
			case <-ctx.Done():
				t.Fatal("the call did not start")
			}
			switch how {
			case "finish":
				cancel()
			case "close":
				srv.close()
			case "base":
				endBase()
			}
			var got callReport
			select {
			case got = <-w.report:
			case <-ctx.Done():
				t.Fatal("the handler did not report")
			}
			if got.value != "base" || got.wrappedValue != "base" {
				t.Errorf("values = %v, %v; want the BaseContext's (base)", got.value, got.wrappedValue)
			}
			if got.err != context.Canceled || got.cause != context.Canceled {
				t.Errorf("err, cause = %v, %v; want %v", got.err, got.cause, context.Canceled)
			}
			if how == "base-before" {
				if got.stopped {
					t.Error("Stop on a cancelled context's registration = true, want false")
				}
			} else if !got.stopped || got.stoppedRan {
				t.Errorf("a registration stopped in time: Stop = %v, ran = %v; want true, false", got.stopped, got.stoppedRan)
			}
			if _, err := fut.Struct(); err == nil {
				t.Error("the call succeeded; want it to fail")
			}
			if how != "close" {
				rel()
				g.Release()
				poll(t, "server tables empty", zeroStats(sc))
			}
		})
	}
}

// TestCallContextBaseDeadline: a restore running when the connection's base
// context passes its deadline (or arriving after it) sees DeadlineExceeded,
// as a child of that context did, and its Return still goes.
func TestCallContextBaseDeadline(t *testing.T) {
	base, end := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer end()
	got := make(chan error, 1)
	s, _ := newScript(t, engine.Options{
		BaseContext: base,
		Restore: func(ctx context.Context, id []byte) (capnp.Client, error) {
			<-ctx.Done()
			got <- ctx.Err()
			return capnp.Client{}, ctx.Err()
		},
	})
	s.restoreFromConn(0, "svc")
	if err := <-got; err != context.DeadlineExceeded {
		t.Errorf("restore's Err after the base deadline = %v, want %v", err, context.DeadlineExceeded)
	}
	s.expect(rpccp.Message_Which_return)
}
