package bridge

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

// TestEngineCancelReachesBackend: over the engine, whose call contexts
// reach the backend call through engine.AfterCancel, the caller's cancel
// (a Finish) and the loss of the CapTP connection (the engine's shutdown)
// cancel the backend call, on the egress's general unary path and on its
// known-unary one.
func TestEngineCancelReachesBackend(t *testing.T) {
	for _, path := range []struct {
		name  string
		kinds Kinds
	}{{"general", nil}, {"known-unary", testKinds}} {
		for _, how := range []string{"cancel", "connection lost"} {
			t.Run(path.name+"/"+how, func(t *testing.T) {
				be := newBackend(t)
				eh := newEngineHop(t, be.addr, hopConfig{
					ingress: IngressConfig{Kinds: directKinds},
					egress:  EgressConfig{Kinds: path.kinds},
				})
				cc := dial(t, eh.addr)
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				done := make(chan outcome, 1)
				go func() { done <- unaryOutcome(ctx, cc, "/t.T/Hang", []byte("x")) }()
				waitStarted(t, be)
				want := codes.Canceled
				if how == "cancel" {
					cancel()
				} else {
					eh.serverNC.Close()
					want = codes.Unavailable
				}
				expectBackendCanceled(t, be)
				select {
				case o := <-done:
					if o.code != want {
						t.Errorf("client got %+v, want %v", o, want)
					}
				case <-time.After(30 * time.Second):
					t.Fatal("the call did not end")
				}
			})
		}
	}
}
