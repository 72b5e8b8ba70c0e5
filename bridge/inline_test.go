package bridge

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3/exc"

	"github.com/vatcar/vatcar/proto/captp"
	"github.com/vatcar/vatcar/vat/engine"
)

// TestPingPongSendsInline checks a ping-pong stream between two engine
// vats: each message, sparse, goes out from its reader's goroutine
// (sender.sendInline) in both directions, and every echo comes back in
// order.
func TestPingPongSendsInline(t *testing.T) {
	b := newBackend(t)
	eh := newEngineHop(t, b.addr, hopConfig{})
	recorded := recordCalls(eh.in)
	cc := dial(t, eh.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n = 200
	s := rawStream(ctx, t, cc, "/t.T/Echo")
	for i := range n {
		msg := pattern(100 + i)
		if err := s.SendMsg(msg); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		var got []byte
		if err := s.RecvMsg(&got); err != nil {
			t.Fatalf("recv %d: %v", i, err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("echo %d: %d bytes, want the %d sent", i, len(got), len(msg))
		}
	}
	s.CloseSend()
	if rest, err := recvAll(s); err != nil || len(rest) != 0 {
		t.Fatalf("after half-close: %d messages, %v; want none, OK", len(rest), err)
	}
	up := &recorded()[0].upStats
	for _, d := range []struct {
		name string
		st   *sendStats
	}{{"request", up}, {"response", eh.down}} {
		msgs, sends, inline := d.st.messages.Load(), d.st.sends.Load(), d.st.inline.Load()
		t.Logf("%s: %d messages, %d sends, %d inline", d.name, msgs, sends, inline)
		if msgs != n {
			t.Errorf("%s: %d messages sent, want %d", d.name, msgs, n)
		}
		if inline < n/2 {
			t.Errorf("%s: %d of %d messages sent inline, want at least half", d.name, inline, n)
		}
	}
}

// TestDenseStreamsBatchWithInlineSends checks that streams read faster
// than they are sent still ride in batches between two engine vats, with
// inline sends on (at most the first message of a burst goes inline):
// a client stream and a server stream of 4000 messages each.
func TestDenseStreamsBatchWithInlineSends(t *testing.T) {
	b := newBackend(t)
	eh := newEngineHop(t, b.addr, hopConfig{})
	recorded := recordCalls(eh.in)
	cc := dial(t, eh.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n = 4000
	up := rawStream(ctx, t, cc, "/t.T/Hash")
	msg := pattern(1 << 10)
	for range n {
		if err := up.SendMsg(msg); err != nil {
			t.Fatal(err)
		}
	}
	up.CloseSend()
	if got, err := recvAll(up); err != nil || len(got) != 1 || binary.BigEndian.Uint64(got[0][32:]) != n<<10 {
		t.Fatalf("Hash: %d replies, %v; want one counting %d bytes", len(got), err, n<<10)
	}
	// The egress counts every call's response: the Flood's from here.
	var flood sendStats
	before := [...]int64{eh.down.messages.Load(), eh.down.sends.Load(), eh.down.inline.Load()}
	req := make([]byte, 16)
	binary.BigEndian.PutUint64(req, n)
	binary.BigEndian.PutUint64(req[8:], 1<<10)
	down := rawStream(ctx, t, cc, "/t.T/Flood")
	down.SendMsg(req)
	down.CloseSend()
	if got, err := recvAll(down); err != nil || len(got) != n {
		t.Fatalf("Flood: %d messages, %v; want %d, OK", len(got), err, n)
	}
	flood.messages.Store(eh.down.messages.Load() - before[0])
	flood.sends.Store(eh.down.sends.Load() - before[1])
	flood.inline.Store(eh.down.inline.Load() - before[2])
	for _, d := range []struct {
		name string
		st   *sendStats
	}{{"client stream", &recorded()[0].upStats}, {"server stream", &flood}} {
		msgs, sends, inline := d.st.messages.Load(), d.st.sends.Load(), d.st.inline.Load()
		t.Logf("%s: %d messages in %d sends (%.1f per send), %d inline", d.name, msgs, sends, float64(msgs)/float64(sends), inline)
		if msgs != n {
			t.Errorf("%s: %d messages sent, want %d", d.name, msgs, n)
		}
		if sends > n/4 {
			t.Errorf("%s: %d Sink.send calls for %d messages, want batches (at most %d)", d.name, sends, n, n/4)
		}
	}
}

// inlineSetup runs a sender on a Sink served by an engine vat over
// loopback TCP (orderSink records what arrives), resolved, so that its
// sends take the direct path from the first. run's result arrives on ran.
func inlineSetup(t *testing.T, ctx context.Context) (rec *orderSink, s *sender, st *sendStats, client *engine.Conn, ran chan error) {
	t.Helper()
	rec = &orderSink{}
	gs := &gateService{gate: make(chan struct{}), sink: captp.Sink_ServerToClient(rec)}
	close(gs.gate)
	t.Cleanup(gs.sink.Release)
	svc, client := gateSetup(t, false, gs)
	fut, release := svc.Open(ctx, nil)
	t.Cleanup(release)
	res, err := fut.Struct()
	if err != nil {
		t.Fatal(err)
	}
	st = new(sendStats)
	s = &sender{sink: res.Up(), ob: newOutbox(1 << 20), stats: st}
	ran = make(chan error, 1)
	go func() { ran <- s.run(ctx) }()
	t.Cleanup(s.ob.stop)
	return rec, s, st, client, ran
}

// waitSenderIdle waits until ob's consumer waits in take with nothing queued:
// a sparse message may then go inline.
func waitSenderIdle(t *testing.T, ob *outbox) {
	t.Helper()
	poll(t, func() bool {
		ob.mu.Lock()
		defer ob.mu.Unlock()
		return ob.idle && len(ob.items) == 0
	}, "the sender to wait for messages")
}

// TestSenderInlineOrder checks that messages sent inline and messages
// queued for the sender's goroutine, interleaved, arrive in the order they
// were given, and that the outbox counts every byte back.
func TestSenderInlineOrder(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rec, s, st, _, ran := inlineSetup(t, ctx)
	var want []string
	for round := range 40 {
		waitSenderIdle(t, s.ob)
		m := "i" + strconv.Itoa(round)
		want = append(want, m)
		if inline := st.inline.Load(); !mustSend(t, ctx, s.ob, m) || st.inline.Load() != inline+1 {
			t.Fatalf("round %d: the message to a waiting sender did not go inline", round)
		}
		// A burst through the queue, and sparse messages after it that
		// go inline only if the sender has caught up.
		for j := range round % 4 {
			m := "q" + strconv.Itoa(round) + "." + strconv.Itoa(j)
			want = append(want, m)
			if !s.ob.put(ctx, msgEvent(m)) {
				t.Fatal("put failed")
			}
		}
		for j := range round % 3 {
			m := "s" + strconv.Itoa(round) + "." + strconv.Itoa(j)
			want = append(want, m)
			mustSend(t, ctx, s.ob, m)
		}
	}
	s.ob.put(ctx, event{kind: evEnd})
	if err := <-ran; err != nil {
		t.Fatalf("run: %v", err)
	}
	if got := rec.received(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("received out of order:\n got %v\nwant %v", got, want)
	}
	sends, inline := st.sends.Load(), st.inline.Load()
	t.Logf("%d messages, %d sends, %d inline", len(want), sends, inline)
	if inline < 40 || sends-inline == 0 {
		t.Errorf("%d of %d sends inline, want at least 40 inline and some by the sender", inline, sends)
	}
	if got := st.messages.Load(); got != int64(len(want)) {
		t.Errorf("%d messages counted sent, want %d", got, len(want))
	}
	s.ob.mu.Lock()
	left := s.ob.bytes
	s.ob.mu.Unlock()
	if left != 0 {
		t.Errorf("outbox counts %d bytes after every message went, want 0", left)
	}
}

// mustSend gives m to ob as a sparse message.
func mustSend(t *testing.T, ctx context.Context, ob *outbox, m string) bool {
	t.Helper()
	ok, _ := ob.send(ctx, msgEvent(m), true)
	if !ok {
		t.Fatalf("send %q: outbox stopped", m)
	}
	return ok
}

// TestSenderInlineFailure checks that a failed inline send ends the sender
// as a failed send of its own does: a failure the far side returns, at
// the next message; a send that could not go (the connection closed), at
// once, with the error a queued message meets.
func TestSenderInlineFailure(t *testing.T) {
	t.Run("returned", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, s, st, _, ran := inlineSetup(t, ctx)
		waitSenderIdle(t, s.ob)
		mustSend(t, ctx, s.ob, "fail")
		if st.inline.Load() != 1 {
			t.Fatal("the failing message did not go inline")
		}
		// Messages until one's send reports the failure.
		var err error
		poll(t, func() bool {
			select {
			case err = <-ran:
				return true
			default:
				mustSend(t, ctx, s.ob, "more")
				return false
			}
		}, "the sender to fail")
		if err == nil || !strings.Contains(err.Error(), "too busy") || exc.TypeOf(errors.Unwrap(err)) != exc.Overloaded {
			t.Fatalf("run: %v, want the send's exception", err)
		}
	})
	errs := map[bool]string{}
	for _, inline := range []bool{false, true} {
		t.Run(fmt.Sprintf("closed/inline=%v", inline), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, s, st, client, ran := inlineSetup(t, ctx)
			waitSenderIdle(t, s.ob)
			mustSend(t, ctx, s.ob, "first")
			// Its Return in, no send is in flight to fail first.
			poll(t, func() bool {
				s.win.mu.Lock()
				defer s.win.mu.Unlock()
				return s.win.calls == 0
			}, "the first send to return")
			client.Close()
			n := st.inline.Load()
			if inline {
				mustSend(t, ctx, s.ob, "lost")
			} else {
				s.ob.put(ctx, msgEvent("lost"))
			}
			err := <-ran
			if err == nil || !strings.HasPrefix(err.Error(), "send on stream: ") {
				t.Fatalf("run: %v, want the failed send's error", err)
			}
			if got := st.inline.Load() - n; got != map[bool]int64{false: 0, true: 1}[inline] {
				t.Fatalf("%d inline sends of the lost message, want it inline only when sent so", got)
			}
			errs[inline] = err.Error()
		})
	}
	if errs[false] != errs[true] {
		t.Errorf("an inline send failed with %q, a queued one with %q; want the same", errs[true], errs[false])
	}
}

// TestSenderInlineCancel_Stress ends senders (their context cancelled, or
// the outbox stopped) while their producer sends sparse messages, inline
// when it can: run returns without waiting on the producer and lets go of
// its Sink only once no inline send uses it (the race detector watches),
// and what arrived is the first messages, in order.
func TestSenderInlineCancel_Stress(t *testing.T) {
	rounds := 60
	if raceDetector {
		rounds = 20
	}
	var inlined int64
	for i := range rounds {
		stop := i%2 == 1
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		rec, s, st, _, ran := inlineSetup(t, ctx)
		produced := make(chan int)
		go func() {
			n := 0
			for ; ; n++ {
				if ok, _ := s.ob.send(ctx, msgEvent(strconv.Itoa(n)), true); !ok {
					break
				}
				if n == 20+i {
					if stop {
						go s.ob.stop()
					} else {
						go cancel()
					}
				}
			}
			produced <- n
		}()
		err := <-ran
		if stop && err != nil || !stop && !errors.Is(err, context.Canceled) {
			t.Fatalf("round %d: run: %v", i, err)
		}
		if s.target.Valid() {
			t.Fatalf("round %d: the sender still holds its Sink's import", i)
		}
		if stop {
			cancel() // ends a producer blocked on a full outbox
		}
		n := <-produced
		poll(t, func() bool { return len(rec.received()) >= int(st.messages.Load()) }, "the sent messages to arrive")
		got := rec.received()
		for j, m := range got {
			if m != strconv.Itoa(j) {
				t.Fatalf("round %d: message %d arrived as %q, want the messages in order", i, j, m)
			}
		}
		if len(got) > n {
			t.Fatalf("round %d: %d messages arrived of %d given", i, len(got), n)
		}
		inlined += st.inline.Load()
		cancel()
	}
	if inlined == 0 {
		t.Error("no message went inline")
	}
}
