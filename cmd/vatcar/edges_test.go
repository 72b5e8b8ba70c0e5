package main_test

import (
	"crypto/tls"
	bin "encoding/binary"
	"strings"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/vatcar/vatcar/proto/captp"
)

// rawPeer is a TLS connection to a vat's CapTP port that speaks capnp
// message by message, as a scripted attacker would.
type rawPeer struct {
	t   *testing.T
	c   *tls.Conn
	enc *capnp.Encoder
	dec *capnp.Decoder
}

func dialRaw(t *testing.T, target string) *rawPeer {
	t.Helper()
	c, err := tls.Dial("tcp", target, &tls.Config{
		Certificates: []tls.Certificate{selfSigned(t)}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	dec := capnp.NewDecoder(c)
	dec.MaxMessageSize = 1 << 30
	return &rawPeer{t: t, c: c, enc: capnp.NewEncoder(c), dec: dec}
}

func (p *rawPeer) send(build func(rpccp.Message)) {
	p.t.Helper()
	msg, seg := capnp.NewMultiSegmentMessage(nil)
	m, err := rpccp.NewRootMessage(seg)
	if err != nil {
		p.t.Fatal(err)
	}
	build(m)
	if err := p.enc.Encode(msg); err != nil {
		p.t.Fatalf("send %v: %v", m.Which(), err)
	}
}

// nextReturn reads messages until a Return and returns it.
func (p *rawPeer) nextReturn() rpccp.Return {
	p.t.Helper()
	p.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		msg, err := p.dec.Decode()
		if err != nil {
			p.t.Fatalf("waiting for a Return: %v", err)
		}
		m, err := rpccp.ReadRootMessage(msg)
		if err != nil {
			p.t.Fatal(err)
		}
		switch m.Which() {
		case rpccp.Message_Which_return:
			r, _ := m.Return()
			return r
		case rpccp.Message_Which_abort:
			e, _ := m.Abort()
			reason, _ := e.Reason()
			p.t.Fatalf("the vat aborted the connection: %s", reason)
		}
	}
}

func (p *rawPeer) bootstrap(qid uint32) rpccp.Return {
	p.t.Helper()
	p.send(func(m rpccp.Message) {
		b, _ := m.NewBootstrap()
		b.SetQuestionId(qid)
	})
	r := p.nextReturn()
	if r.AnswerId() != qid || r.Which() != rpccp.Return_Which_results {
		p.t.Fatalf("bootstrap %d: return %d %v", qid, r.AnswerId(), r.Which())
	}
	return r
}

// TestOversizeCapTPMessageFailsThatCall sends the exporter's CapTP port a
// Call of 8 MiB, over its decode limit (--max-message-size 4 MiB plus
// room for metadata: about 5 MiB): the call gets an Overloaded exception
// naming both sizes, the connection lives (a Bootstrap after it is
// answered), it is counted, and the exporter's heap does not hold the
// message. An oversize message that cannot be attributed then aborts that
// connection, counted as a protocol violation. Before, the limit had a 64 MiB floor and a larger message
// aborted the connection.
func TestOversizeCapTPMessageFailsThatCall(t *testing.T) {
	p, ctx := startCalledPair(t)
	peer := dialRaw(t, p.exp.Listen[len("tcp:"):])
	peer.bootstrap(0)
	heapBefore := scrape(t, p.exp.Health, "go_memstats_heap_inuse_bytes", nil)
	peer.send(func(m rpccp.Message) {
		call, _ := m.NewCall()
		call.SetQuestionId(1)
		call.SetInterfaceId(0xdeadbeef)
		tgt, _ := call.NewTarget()
		pa, _ := tgt.NewPromisedAnswer()
		pa.SetQuestionId(0)
		params, _ := call.NewParams()
		d, _ := capnp.NewData(params.Segment(), make([]byte, 8<<20))
		_ = params.SetContent(d.ToPtr())
	})
	r := peer.nextReturn()
	if r.AnswerId() != 1 || r.Which() != rpccp.Return_Which_exception {
		t.Fatalf("oversize call: return %d %v, want an exception for 1", r.AnswerId(), r.Which())
	}
	e, _ := r.Exception()
	reason, _ := e.Reason()
	if e.Type() != rpccp.Exception_Type_overloaded || !strings.Contains(reason, "over the receiving vat's limit") {
		t.Errorf("oversize call: %v %q, want Overloaded naming the limit", e.Type(), reason)
	}
	heap := scrape(t, p.exp.Health, "go_memstats_heap_inuse_bytes", nil)
	t.Logf("exception: %q; exporter heap in use %.1f -> %.1f MiB", reason, heapBefore/(1<<20), heap/(1<<20))
	peer.send(func(m rpccp.Message) {
		f, _ := m.NewFinish()
		f.SetQuestionId(1)
	})
	peer.bootstrap(2) // the connection lives
	if got := scrape(t, p.exp.Health, "vatcar_vat_limited_calls_total", map[string]string{"reason": "message size"}); got != 1 {
		t.Errorf("vatcar_vat_limited_calls_total{reason=\"message size\"} = %v, want 1", got)
	}
	// An oversize message that is no Call or Return (all zeros: a null
	// root) cannot be attributed: the exporter aborts this connection
	// alone, with a reason, and counts it.
	hdr := make([]byte, 8)
	bin.LittleEndian.PutUint32(hdr[4:], (8<<20)/8)
	if _, err := peer.c.Write(append(hdr, make([]byte, 8<<20)...)); err != nil {
		t.Fatal(err)
	}
	peer.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		msg, err := peer.dec.Decode()
		if err != nil {
			t.Fatalf("waiting for the Abort: %v", err)
		}
		m, _ := rpccp.ReadRootMessage(msg)
		if m.Which() == rpccp.Message_Which_abort {
			e, _ := m.Abort()
			reason, _ := e.Reason()
			if !strings.Contains(reason, "8388616 bytes") {
				t.Errorf("abort reason %q, want the size", reason)
			}
			break
		}
	}
	waitFor(t, 10*time.Second, "the abort to be counted", func() bool {
		return scrape(t, p.exp.Health, "vatcar_vat_refused_connections_total", map[string]string{"reason": "protocol violation"}) == 1
	})
	if _, err := p.client.EmptyCall(ctx, &testpb.Empty{}); err != nil {
		t.Errorf("importer's call: %v", err)
	}
}

// TestDecodeLimitMismatchFailsOnlyThatCall: the importer allows 8 MiB of
// metadata, the exporter 64 KiB (its decode limit about 5 MiB). An app
// call carrying 6 MiB of metadata becomes a CapTP message over the
// exporter's limit: the app gets RESOURCE_EXHAUSTED naming the limit, for
// a unary call and for a stream, and the next calls on the same CapTP
// connection pass.
func TestDecodeLimitMismatchFailsOnlyThatCall(t *testing.T) {
	p := startPairArgs(t, []string{"--max-metadata-size", "8MiB"})
	ctx := ctxTimeout(t, 60*time.Second)
	if _, err := p.client.EmptyCall(ctx, &testpb.Empty{}); err != nil {
		t.Fatal(err)
	}
	md := metadata.Pairs("big", strings.Repeat("m", 6<<20))
	_, err := p.client.EmptyCall(metadata.NewOutgoingContext(ctx, md), &testpb.Empty{})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "limit") {
		t.Errorf("call with 6 MiB of metadata: %v, want RESOURCE_EXHAUSTED naming the limit", err)
	}
	t.Logf("app got: %v", err)
	// The same for a stream: its open call is the oversize message.
	stream, err := p.client.FullDuplexCall(metadata.NewOutgoingContext(ctx, md))
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "limit") {
		t.Errorf("stream with 6 MiB of metadata: %v, want RESOURCE_EXHAUSTED naming the limit", err)
	}
	for i := range 3 {
		if _, err := p.client.EmptyCall(ctx, &testpb.Empty{}); err != nil {
			t.Errorf("call %d after: %v", i, err)
		}
	}
	if got := scrape(t, p.exp.Health, "vatcar_vat_connections", nil); got != 1 {
		t.Errorf("exporter holds %v connections, want the one it had", got)
	}
}

// TestUnreadRepliesCloseTheConnection is issue 14's third row against the
// built binary: one TLS connection makes empty-id restores (pipelined on
// its Bootstrap) as fast as it can and finishes each at once, but never
// reads a reply. The exporter queues at most 4 MiB for it and stops
// reading it; once its writes make no progress for 15 s it closes the
// connection and counts it (send queue). The legitimate importer's calls
// pass throughout and the exporter's memory stays bounded.
func TestUnreadRepliesCloseTheConnection(t *testing.T) {
	p, ctx := startCalledPair(t)
	peer := dialRaw(t, p.exp.Listen[len("tcp:"):])
	legit := keepCalling(ctx, p.client)
	start := time.Now()
	peer.send(func(m rpccp.Message) {
		b, _ := m.NewBootstrap()
		b.SetQuestionId(0)
	})
	restore := func(qid uint32) *capnp.Message {
		msg, seg := capnp.NewMultiSegmentMessage(nil)
		m, _ := rpccp.NewRootMessage(seg)
		call, _ := m.NewCall()
		call.SetQuestionId(qid)
		call.SetInterfaceId(captp.Restorer_TypeID)
		call.SetMethodId(0)
		tgt, _ := call.NewTarget()
		pa, _ := tgt.NewPromisedAnswer()
		pa.SetQuestionId(0)
		params, _ := call.NewParams()
		args, _ := captp.NewRestorer_restore_Params(params.Segment())
		_ = params.SetContent(args.ToPtr())
		return msg
	}
	finish := func(qid uint32) *capnp.Message {
		msg, seg := capnp.NewMultiSegmentMessage(nil)
		m, _ := rpccp.NewRootMessage(seg)
		f, _ := m.NewFinish()
		f.SetQuestionId(qid)
		return msg
	}
	const restores = 400000
	sent := 0
	for qid := uint32(1); qid <= restores; qid++ {
		if peer.enc.Encode(restore(qid)) != nil || peer.enc.Encode(finish(qid)) != nil {
			break // the exporter closed the connection
		}
		sent++
	}
	closedAfter := time.Since(start)
	waitFor(t, 30*time.Second, "the close to be counted", func() bool {
		return scrape(t, p.exp.Health, "vatcar_vat_refused_connections_total", map[string]string{"reason": "send queue"}) == 1
	})
	calls := legit()
	heap := scrape(t, p.exp.Health, "go_memstats_heap_inuse_bytes", nil)
	rss := scrape(t, p.exp.Health, "process_resident_memory_bytes", nil)
	t.Logf("%d restores sent, connection closed %v after the first; exporter heap in use %.0f MiB, RSS %.0f MiB; importer's calls meanwhile: %d ok, %d failed, slowest %v",
		sent, closedAfter.Round(time.Millisecond), heap/(1<<20), rss/(1<<20), calls.ok, calls.failed, calls.slowest)
	if sent == restores {
		t.Errorf("all %d restores went onto the wire: the exporter kept reading a peer that reads nothing", restores)
	}
	if rss > maxAttackRSS {
		t.Errorf("exporter RSS %.0f MiB, want under %d MiB", rss/(1<<20), maxAttackRSS>>20)
	}
	if calls.ok == 0 || calls.failed > 0 {
		t.Errorf("the importer's calls during the attack: %d ok, %d failed (first error: %v)", calls.ok, calls.failed, calls.err)
	}
	if got := scrape(t, p.exp.Health, "vatcar_vat_refused_connections_total", map[string]string{"reason": "answer budget"}); got != 0 {
		t.Errorf("closed for its answer budget (%v), though it finished every call", got)
	}
}
