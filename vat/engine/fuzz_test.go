package engine_test

import (
	"context"
	"io"
	"sync"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/vatcar/vatcar/proto/captp"
	"github.com/vatcar/vatcar/vat/engine"
)

// scriptCodec feeds a script of messages (and *engine.MessageTooLarge
// errors) to a Conn, then EOF; what the Conn sends is counted and dropped.
type scriptCodec struct {
	mu     sync.Mutex
	script []any
	sent   int
	closed chan struct{}
	once   sync.Once
}

func (s *scriptCodec) Encode(m *capnp.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sent++
	return nil
}

func (s *scriptCodec) Decode() (*capnp.Message, error) {
	s.mu.Lock()
	if len(s.script) > 0 {
		v := s.script[0]
		s.script = s.script[1:]
		s.mu.Unlock()
		if e, ok := v.(*engine.MessageTooLarge); ok {
			return nil, e
		}
		return v.(*capnp.Message), nil
	}
	s.mu.Unlock()
	<-s.closed
	return nil, io.EOF
}

func (s *scriptCodec) Close() error {
	s.once.Do(func() { close(s.closed) })
	return nil
}

// buildScript turns fuzz bytes into rpc messages: each 5 bytes pick a kind
// and small ids, so that sequences hit live questions, answers, imports and
// exports; kind 12 is a message the codec skipped for its size.
func buildScript(data []byte) []any {
	var out []any
	ifaces := []uint64{captp.Restorer_TypeID, captp.Sink_TypeID, captp.GrpcService_TypeID, 0x1234}
	for len(data) >= 5 {
		kind, a, b, c, d := data[0], uint32(data[1]%8), uint32(data[2]%8), data[3], data[4]
		data = data[5:]
		if kind%13 == 12 {
			kinds := []rpccp.Message_Which{rpccp.Message_Which_call, rpccp.Message_Which_bootstrap, rpccp.Message_Which_return, rpccp.Message_Which_resolve}
			out = append(out, &engine.MessageTooLarge{Known: c%4 != 0, Which: kinds[int(d)%len(kinds)], ID: a, ReleaseParamCaps: c%2 == 1, Size: 1 << 20, Limit: 1 << 10})
			continue
		}
		msg, seg, _ := capnp.NewMessage(capnp.SingleSegment(nil))
		m, _ := rpccp.NewRootMessage(seg)
		switch kind % 13 {
		case 0:
			bs, _ := m.NewBootstrap()
			bs.SetQuestionId(a)
			if c%2 == 1 {
				t, _ := capnp.NewText(seg, string([]byte{'s', 'v', 'c'}[:int(d%4)]))
				_ = bs.SetDeprecatedObjectId(t.ToPtr())
			}
		case 1, 2:
			call, _ := m.NewCall()
			call.SetQuestionId(a)
			call.SetInterfaceId(ifaces[int(c)%len(ifaces)])
			call.SetMethodId(uint16(d % 3))
			tgt, _ := call.NewTarget()
			if kind%13 == 1 {
				tgt.SetImportedCap(b)
			} else {
				pa, _ := tgt.NewPromisedAnswer()
				pa.SetQuestionId(b)
				if d%2 == 1 {
					ops, _ := pa.NewTransform(1)
					ops.At(0).SetGetPointerField(uint16(c % 2))
				}
			}
			p, _ := call.NewParams()
			st, _ := capnp.NewStruct(seg, capnp.ObjectSize{PointerCount: 2})
			_ = p.SetContent(st.ToPtr())
			if c%3 == 0 {
				list, _ := p.NewCapTable(1)
				switch d % 4 {
				case 0:
					list.At(0).SetSenderHosted(b)
				case 1:
					list.At(0).SetSenderPromise(b)
				case 2:
					list.At(0).SetReceiverHosted(b)
				default:
					list.At(0).SetNone()
				}
				_ = st.SetPtr(0, capnp.NewInterface(seg, 0).ToPtr())
			}
		case 3:
			f, _ := m.NewFinish()
			f.SetQuestionId(a)
			f.SetReleaseResultCaps(c%2 == 1)
		case 4:
			r, _ := m.NewRelease()
			r.SetId(a)
			r.SetReferenceCount(uint32(c % 3))
		case 5:
			r, _ := m.NewResolve()
			r.SetPromiseId(a)
			if c%2 == 0 {
				d0, _ := r.NewCap()
				d0.SetSenderHosted(b)
			} else {
				e, _ := r.NewException()
				_ = e.SetReason("no")
			}
		case 6:
			dm, _ := m.NewDisembargo()
			t, _ := dm.NewTarget()
			t.SetImportedCap(a)
			if c%2 == 0 {
				dm.Context().SetSenderLoopback(b)
			} else {
				dm.Context().SetReceiverLoopback(b)
			}
		case 7:
			r, _ := m.NewReturn()
			r.SetAnswerId(a)
			r.SetCanceled()
		case 8:
			e, _ := m.NewAbort()
			_ = e.SetReason("bye")
		case 9:
			p, _ := m.NewProvide()
			p.SetQuestionId(a)
		case 10:
			u, _ := m.NewUnimplemented()
			bs, _ := u.NewBootstrap()
			bs.SetQuestionId(a)
		default:
			j, _ := m.NewJoin()
			j.SetQuestionId(a)
		}
		out = append(out, msg)
	}
	return out
}

type fuzzRestorer struct{}

func (fuzzRestorer) Restore(ctx context.Context, call captp.Restorer_restore) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetCap(capnp.Client(captp.Sink_ServerToClient(&recorder{})))
}

// FuzzConn feeds random message sequences to one connection: no panic, it
// ends, and its tables are empty afterwards.
func FuzzConn(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 3, 1, 0, 0, 0, 3, 0, 0, 0, 0})
	f.Add([]byte{0, 0, 0, 1, 3, 2, 1, 0, 0, 1, 7, 0, 0, 0, 0})
	f.Add([]byte{1, 0, 1, 0, 0, 5, 1, 0, 0, 0, 4, 1, 0, 1, 0, 6, 0, 0, 0, 0})
	f.Add([]byte{9, 0, 0, 0, 0, 11, 0, 0, 0, 0, 10, 0, 0, 0, 0, 8, 0, 0, 0, 0})
	f.Add([]byte{0, 0, 0, 0, 0, 12, 1, 0, 1, 0, 3, 1, 0, 0, 0, 12, 2, 0, 1, 2, 0, 3, 0, 0, 0, 0, 4, 0, 0, 0, 0, 5, 0, 0, 0, 0, 6, 0, 0, 0, 12, 7, 0, 0, 0})
	// A restored Sink, headers pipelined on it (results without
	// capabilities: noFinishNeeded), that call's Finish anyway, a call
	// pipelined on its answer, then the other Finishes.
	f.Add([]byte{0, 0, 0, 1, 3, 2, 1, 0, 1, 0, 3, 1, 0, 0, 0, 2, 2, 1, 1, 0, 3, 0, 0, 0, 0, 3, 2, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 5*64 {
			return
		}
		sc := &scriptCodec{script: buildScript(data), closed: make(chan struct{})}
		c := engine.NewConn(sc, &engine.Options{
			MaxAnswers: 3,
			Bootstrap:  capnp.Client(captp.Restorer_ServerToClient(fuzzRestorer{})),
			Restore: func(ctx context.Context, id []byte) (capnp.Client, error) {
				if string(id) == "svc" {
					return capnp.Client(captp.Sink_ServerToClient(&recorder{})), nil
				}
				return capnp.Client{}, exc.New(exc.Failed, "", unknownText)
			},
		})
		// The script ends with EOF only once read; give it time, then
		// close. Either way the connection must end.
		deadline := time.Now().Add(5 * time.Second)
		for {
			sc.mu.Lock()
			left := len(sc.script)
			sc.mu.Unlock()
			if left == 0 || time.Now().After(deadline) {
				break
			}
			select {
			case <-c.Done():
				left = 0
			default:
				time.Sleep(time.Millisecond)
			}
			if left == 0 {
				break
			}
		}
		c.Close()
		select {
		case <-c.Done():
		case <-time.After(30 * time.Second):
			t.Fatal("connection did not end")
		}
		if s := c.Stats(); s != (engine.Stats{}) {
			t.Fatalf("tables left after close: %+v", s)
		}
	})
}
