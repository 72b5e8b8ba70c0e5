package bridge

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestMixedCalls_Stress runs every kind of call at once through one
// bridge, many times: unary, server streaming, bidi with half-close,
// cancellation mid-stream. Each result is checked.
func TestMixedCalls_Stress(t *testing.T) {
	b := newBackend(t)
	h := newHop(t, b.addr, hopConfig{})
	cc := dial(t, h.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				if err := mixedCall(ctx, cc, g+i); err != nil {
					errs <- fmt.Errorf("goroutine %d call %d: %w", g, i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// mixedCall makes call kind k%4 and checks its result.
func mixedCall(ctx context.Context, cc *grpc.ClientConn, k int) error {
	opts := []grpc.CallOption{grpc.ForceCodecV2(Codec())}
	switch k % 4 {
	case 0: // unary
		msg := pattern(1 + k*31%20000)
		var got []byte
		if err := cc.Invoke(ctx, "/t.T/Echo", msg, &got, opts...); err != nil {
			return err
		}
		if !bytes.Equal(got, msg) {
			return fmt.Errorf("unary echo differs")
		}
	case 1: // server streaming
		s, err := cc.NewStream(ctx, &streamDesc, "/t.T/Flood", opts...)
		if err != nil {
			return err
		}
		n, size := 1+k%20, 1+k*7%3000
		req := binary.BigEndian.AppendUint64(nil, uint64(n))
		s.SendMsg(binary.BigEndian.AppendUint64(req, uint64(size)))
		s.CloseSend()
		got, err := recvAll(s)
		if err != nil {
			return err
		}
		if len(got) != n || !bytes.Equal(got[n-1], pattern(size)) {
			return fmt.Errorf("flood: %d messages, want %d", len(got), n)
		}
	case 2: // bidi with half-close
		s, err := cc.NewStream(ctx, &streamDesc, "/t.T/Echo", opts...)
		if err != nil {
			return err
		}
		msgs := testMessages(1 + k%10)
		for _, m := range msgs {
			if err := s.SendMsg(m); err != nil {
				return err
			}
		}
		s.CloseSend()
		got, err := recvAll(s)
		if err != nil {
			return err
		}
		if len(got) != len(msgs) {
			return fmt.Errorf("bidi: %d messages, want %d", len(got), len(msgs))
		}
	case 3: // cancelled after the first response
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		s, err := cc.NewStream(cctx, &streamDesc, "/t.T/Echo", opts...)
		if err != nil {
			return err
		}
		s.SendMsg([]byte("x"))
		var m []byte
		if err := s.RecvMsg(&m); err != nil {
			return err
		}
		cancel()
		if _, err := recvAll(s); status.Code(err) != codes.Canceled {
			return fmt.Errorf("cancelled stream ended with %v", err)
		}
	}
	return nil
}
