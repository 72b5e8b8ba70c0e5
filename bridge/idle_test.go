package bridge

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestIdleStreamEnds checks StreamIdleTimeout: a stream on which nothing
// passes ends with DEADLINE_EXCEEDED naming the setting, and gives its slot
// back.
func TestIdleStreamEnds(t *testing.T) {
	b := newBackend(t)
	const idle = 300 * time.Millisecond
	h := newHop(t, b.addr, hopConfig{egress: EgressConfig{StreamIdleTimeout: idle}})
	cc := dial(t, h.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := rawStream(ctx, t, cc, "/t.T/Echo")
	if err := s.SendMsg([]byte("one")); err != nil {
		t.Fatal(err)
	}
	var got []byte
	if err := s.RecvMsg(&got); err != nil {
		t.Fatalf("echo: %v", err)
	}
	start := time.Now()
	err := s.RecvMsg(&got)
	if st := status.Convert(err); st.Code() != codes.DeadlineExceeded || !strings.Contains(st.Message(), "--stream-idle-timeout") {
		t.Fatalf("idle stream: %v, want DEADLINE_EXCEEDED naming --stream-idle-timeout", err)
	}
	if waited := time.Since(start); waited < idle/2 {
		t.Errorf("the stream ended %v after its last message, before the %v timeout", waited, idle)
	}
	poll(t, func() bool { return h.eg.active.Load() == 0 }, "the idle stream's slot to come back")
}

func TestIdleLeft(t *testing.T) {
	const timeout = 10 * time.Second
	for _, tt := range []struct {
		sinceLast time.Duration
		want      time.Duration
	}{
		{0, timeout},
		{4 * time.Second, 6 * time.Second},
		{timeout, 0},
		{time.Minute, timeout - time.Minute},
	} {
		now := time.Now().UnixNano()
		if got := idleLeft(now-int64(tt.sinceLast), now, timeout); got != tt.want {
			t.Errorf("idleLeft(%v since the last message) = %v, want %v", tt.sinceLast, got, tt.want)
		}
	}
}

// TestIngressIdleStreamEnds checks IngressConfig.StreamIdleTimeout: an
// app's stream on which nothing passes ends at the ingress with
// DEADLINE_EXCEEDED naming the setting, the capnp call is cancelled (the
// egress's slot comes back), and a unary call slower than the timeout is
// not cut.
func TestIngressIdleStreamEnds(t *testing.T) {
	b := newBackend(t)
	const idle = time.Second
	h := newHop(t, b.addr, hopConfig{ingress: IngressConfig{StreamIdleTimeout: idle, Kinds: Kinds{"/t.T/Hang": KindUnary}}})
	cc := dial(t, h.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := rawStream(ctx, t, cc, "/t.T/Echo")
	// Messages keep it alive past the timeout.
	for opened := time.Now(); time.Since(opened) < 2*idle; {
		if err := s.SendMsg([]byte("one")); err != nil {
			t.Fatal(err)
		}
		var got []byte
		if err := s.RecvMsg(&got); err != nil {
			t.Fatalf("echo %v after the stream opened: %v", time.Since(opened), err)
		}
	}
	start := time.Now()
	var got []byte
	err := s.RecvMsg(&got)
	if st := status.Convert(err); st.Code() != codes.DeadlineExceeded || !strings.Contains(st.Message(), "--stream-idle-timeout") {
		t.Fatalf("idle stream: %v, want DEADLINE_EXCEEDED naming --stream-idle-timeout", err)
	}
	if waited := time.Since(start); waited < idle/2 {
		t.Errorf("the stream ended %v after its last message, before the %v timeout", waited, idle)
	}
	poll(t, func() bool { return h.eg.active.Load() == 0 }, "the egress's call to end")

	// A unary call on a backend that answers after twice the timeout ends
	// by its own deadline, not as an idle stream.
	uctx, ucancel := context.WithTimeout(ctx, 2*idle)
	defer ucancel()
	err = cc.Invoke(uctx, "/t.T/Hang", []byte("x"), new([]byte), grpc.ForceCodecV2(Codec()))
	if st := status.Convert(err); st.Code() != codes.DeadlineExceeded || strings.Contains(st.Message(), "--stream-idle-timeout") {
		t.Fatalf("slow unary call: %v, want its own DEADLINE_EXCEEDED", err)
	}
	<-b.started
}
