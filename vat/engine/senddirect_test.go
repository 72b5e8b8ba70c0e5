package engine_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	"capnproto.org/go/capnp/v3/flowcontrol"

	"github.com/vatcar/vatcar/proto/captp"
	"github.com/vatcar/vatcar/vat/engine"
)

var (
	sinkSendMethod = captp.Sink_Methods(nil, nil)[1].Method
	sinkSendSize   = capnp.ObjectSize{PointerCount: 1}
)

// sinkParams places Sink.send params of one chunk holding data.
func sinkParams(data string) func(capnp.Struct) error {
	return func(s capnp.Struct) error {
		l, err := captp.Sink_send_Params(s).NewChunks(1)
		if err != nil {
			return err
		}
		l.At(0).SetEnd(true)
		return l.At(0).SetData([]byte(data))
	}
}

// recordSink is a Sink whose send records each chunk's data in order:
// "fail" fails with an Overloaded exception, "block" waits for unblock.
type recordSink struct {
	mu      sync.Mutex
	got     []string
	blocked chan struct{} // closed when "block" starts
	unblock chan struct{}
}

func (s *recordSink) Headers(ctx context.Context, call captp.Sink_headers) error { return nil }
func (s *recordSink) Close(ctx context.Context, call captp.Sink_close) error     { return nil }

func (s *recordSink) Send(ctx context.Context, call captp.Sink_send) error {
	l, _ := call.Args().Chunks()
	d, _ := l.At(0).Data()
	s.mu.Lock()
	s.got = append(s.got, string(d))
	s.mu.Unlock()
	switch string(d) {
	case "fail":
		return exc.New(exc.Overloaded, "", "too busy")
	case "block":
		close(s.blocked)
		select {
		case <-s.unblock:
		case <-ctx.Done():
		}
	}
	return nil
}

func (s *recordSink) received() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.got...)
}

// doneRecord counts the calls of SendDirect's done functions.
type doneRecord struct {
	mu    sync.Mutex
	calls map[int]int
	errs  map[int]error
	all   chan struct{} // closed when want calls were counted
	want  int
	total int
}

func newDoneRecord(want int) *doneRecord {
	return &doneRecord{calls: map[int]int{}, errs: map[int]error{}, all: make(chan struct{}), want: want}
}

// done is SendDirect's done for every call; the tag is the call's index.
func (r *doneRecord) done(i int, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls[i]++
	r.errs[i] = err
	r.total++
	if r.total == r.want {
		close(r.all)
	}
}

func (r *doneRecord) wait(t *testing.T) {
	t.Helper()
	select {
	case <-r.all:
	case <-time.After(5 * time.Minute):
		t.Fatal("timed out waiting for done calls")
	}
}

// check fails unless done i ran exactly once with an error for which ok
// holds.
func (r *doneRecord) check(t *testing.T, i int, ok func(error) bool) {
	t.Helper()
	r.mu.Lock()
	n, err := r.calls[i], r.errs[i]
	r.mu.Unlock()
	if n != 1 || !ok(err) {
		t.Fatalf("done %d: called %d times, err %v", i, n, err)
	}
}

func isNil(err error) bool { return err == nil }

// sinkImport bootstraps a Sink served by impl over s and waits until the
// client is a plain import.
func sinkImport(t *testing.T, s setup, impl *recordSink) (capnp.Client, *engine.Conn, *engine.Conn) {
	t.Helper()
	ctx := ctxT(t)
	cl, cc, sc := s.make(t, capnp.Client(captp.Sink_ServerToClient(impl)))
	boot := cl.bootstrap(ctx)
	if err := boot.Resolve(ctx); err != nil {
		t.Fatal(err)
	}
	return boot, cc, sc
}

// TestSendDirectEngines: over real connections, to a go-capnp server and to
// the engine, SendDirect on an import sends the call; done runs once, with
// nil or the callee's exception as the normal path reports it; calls made
// by either path to the import arrive in the order made, many in flight;
// the tables empty afterwards.
func TestSendDirectEngines(t *testing.T) {
	for _, s := range setups {
		if s.name == "gocapnp-to-engine" {
			continue // the client is go-capnp's: nothing direct
		}
		t.Run(s.name, func(t *testing.T) {
			// Generous: under -race every send's snapshot takes a stack
			// trace for the leak reports and clears a 1 MB buffer
			// (go-capnp's SetClientLeakFunc), 6 ms a send alone.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			impl := &recordSink{}
			boot, cc, sc := sinkImport(t, s, impl)

			r := newDoneRecord(2)
			ok, err := engine.SendDirect(boot, sinkSendMethod, sinkSendSize, sinkParams("a"), 0, r.done, 0)
			if !ok || err != nil {
				t.Fatalf("SendDirect: ok=%v %v", ok, err)
			}
			ok, err = engine.SendDirect(boot, sinkSendMethod, sinkSendSize, sinkParams("fail"), 0, r.done, 1)
			if !ok || err != nil {
				t.Fatalf("SendDirect fail: ok=%v %v", ok, err)
			}
			r.wait(t)
			r.check(t, 0, isNil)
			ans, rel := boot.SendCall(ctx, capnp.Send{Method: sinkSendMethod, PlaceArgs: sinkParams("fail"), ArgsSize: sinkSendSize})
			_, nerr := ans.Struct()
			rel()
			r.check(t, 1, func(err error) bool {
				return err != nil && nerr != nil && err.Error() == nerr.Error() && exc.TypeOf(err) == exc.Overloaded
			})

			// Many in flight, by both paths in turn, at once.
			const n = 200
			r = newDoneRecord(n / 2)
			var normal []*capnp.Answer
			var rels []capnp.ReleaseFunc
			want := []string{"a", "fail", "fail"}
			for i := range n {
				data := strconv.Itoa(i)
				want = append(want, data)
				if i%2 == 1 {
					ans, rel := boot.SendCall(ctx, capnp.Send{Method: sinkSendMethod, PlaceArgs: sinkParams(data), ArgsSize: sinkSendSize})
					normal, rels = append(normal, ans), append(rels, rel)
					continue
				}
				ok, err := engine.SendDirect(boot, sinkSendMethod, sinkSendSize, sinkParams(data), 64<<10, r.done, i)
				if !ok || err != nil {
					t.Fatalf("SendDirect %d: ok=%v %v", i, ok, err)
				}
			}
			r.wait(t)
			for i := 0; i < n; i += 2 {
				r.check(t, i, isNil)
			}
			for i, ans := range normal {
				if _, err := ans.Struct(); err != nil {
					t.Fatalf("normal send %d: %v", i, err)
				}
				rels[i]()
			}
			if got := impl.received(); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("received out of order:\n got %v\nwant %v", got, want)
			}

			boot.Release()
			poll(t, "client tables empty", zeroStats(cc))
			if sc != nil {
				poll(t, "server tables empty", zeroStats(sc))
			}
		})
	}
}

// TestSendDirectFallback: a client that is not a plain import (a local
// server, a client with a flow limiter, a null client) takes no direct
// path: nothing is sent and done never runs.
func TestSendDirectFallback(t *testing.T) {
	impl := &recordSink{}
	local := capnp.Client(captp.Sink_ServerToClient(impl))
	defer local.Release()
	boot, _, _ := sinkImport(t, setups[2], &recordSink{})
	defer boot.Release()
	limited := boot.AddRef()
	defer limited.Release()
	limited.SetFlowLimiter(flowcontrol.NewFixedLimiter(1 << 20))
	for name, cl := range map[string]capnp.Client{"local": local, "limited": limited, "null": {}} {
		called := false
		ok, err := engine.SendDirect(cl, sinkSendMethod, sinkSendSize, sinkParams("x"), 0, func(int, error) { called = true }, 0)
		if ok || err != nil || called {
			t.Errorf("%s: ok=%v err=%v done called=%v, want false, nil, false", name, ok, err, called)
		}
	}
	if got := impl.received(); len(got) != 0 {
		t.Fatalf("local server received %v", got)
	}
}

// TestDirectTarget: a DirectTarget holds the import it found: its sends
// arrive in order, each done once, even after the client's own release;
// its Release (twice is fine) lets the import go; a client with no direct
// path gives none.
func TestDirectTarget(t *testing.T) {
	for _, s := range setups {
		if s.name == "gocapnp-to-engine" {
			continue
		}
		t.Run(s.name, func(t *testing.T) {
			impl := &recordSink{}
			boot, cc, sc := sinkImport(t, s, impl)
			tgt, ok := engine.NewDirectTarget(boot)
			if !ok || !tgt.Valid() {
				t.Fatalf("NewDirectTarget on an import: ok=%v valid=%v", ok, tgt.Valid())
			}
			boot.Release() // the target still holds the import
			const n = 5
			r := newDoneRecord(n)
			var want []string
			for i := range n {
				want = append(want, strconv.Itoa(i))
				if err := tgt.Send(sinkSendMethod, sinkSendSize, sinkParams(want[i]), 0, r.done, i); err != nil {
					t.Fatalf("Send %d: %v", i, err)
				}
			}
			r.wait(t)
			for i := range n {
				r.check(t, i, isNil)
			}
			if got := impl.received(); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("received %v, want %v", got, want)
			}
			if st := cc.Stats(); st.Imports != 1 {
				t.Fatalf("client imports with the target held: %d, want 1", st.Imports)
			}
			tgt.Release()
			tgt.Release()
			if tgt.Valid() {
				t.Fatal("a released target is still valid")
			}
			poll(t, "client tables empty", zeroStats(cc))
			if sc != nil {
				poll(t, "server tables empty", zeroStats(sc))
			}
		})
	}
	local := capnp.Client(captp.Sink_ServerToClient(&recordSink{}))
	defer local.Release()
	for name, cl := range map[string]capnp.Client{"local": local, "null": {}} {
		if tgt, ok := engine.NewDirectTarget(cl); ok || tgt.Valid() {
			t.Errorf("%s: NewDirectTarget ok=%v valid=%v, want neither", name, ok, tgt.Valid())
		}
	}
}

// TestSendDirectConnectionEnd: sends in flight when the connection ends get
// done once with the connection's error; a send after the end fails at once
// and done never runs.
func TestSendDirectConnectionEnd(t *testing.T) {
	for _, s := range setups {
		if s.name == "gocapnp-to-engine" {
			continue
		}
		t.Run(s.name, func(t *testing.T) {
			impl := &recordSink{blocked: make(chan struct{}), unblock: make(chan struct{})}
			t.Cleanup(func() { close(impl.unblock) })
			boot, cc, _ := sinkImport(t, s, impl)
			defer boot.Release()
			const n = 20
			r := newDoneRecord(n)
			for i := range n {
				data := "x"
				if i == 0 {
					data = "block"
				}
				if ok, err := engine.SendDirect(boot, sinkSendMethod, sinkSendSize, sinkParams(data), 0, r.done, i); !ok || err != nil {
					t.Fatalf("SendDirect %d: ok=%v %v", i, ok, err)
				}
			}
			<-impl.blocked
			cc.Close()
			r.wait(t)
			for i := range n {
				r.check(t, i, func(err error) bool { return exc.TypeOf(err) == exc.Disconnected })
			}
			called := false
			ok, err := engine.SendDirect(boot, sinkSendMethod, sinkSendSize, sinkParams("late"), 0, func(int, error) { called = true }, 0)
			if !ok || err == nil || called {
				t.Fatalf("after the end: ok=%v err=%v done called=%v", ok, err, called)
			}
			poll(t, "client tables empty", zeroStats(cc))
		})
	}
}
