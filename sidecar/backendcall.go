package sidecar

import (
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
)

// backendCall is one call of an export's client that backendStream let
// through, in one allocation: the stream grpc-go made, whose errors it
// reports as the revocation once the export is cut off (revocable, not the
// cancellation the cut causes); what the call's end reports to the metrics
// and to the drain's count; and the call options given to grpc-go, the
// egress's followed by the finish option (a slice of their own would be one
// more allocation per call).
//
// finish may run on a goroutine of grpc-go's while the egress uses the
// stream; it reads only what is set before the stream is made.
type backendCall struct {
	grpc.ClientStream // set once grpc-go made it
	r                 revocable
	ms                *methodSeries
	start             time.Time
	inflight          *atomic.Int64 // Sidecar.egressInflight
	opts              [backendCallOpts]grpc.CallOption
}

// backendCallOpts is how many call options a backendCall holds: the
// egress gives three (codec and message sizes), the finish option makes
// four (the sidecar adds no EgressConfig.CallOptions). More still work, in
// a slice of their own.
const backendCallOpts = 4

// finish is the call's grpc.OnFinish: grpc-go calls it exactly once, when
// the call ends for whatever reason, also when the stream could not be
// made. It counts the call's end in the metrics and in inflight.
func (c *backendCall) finish(err error) {
	c.ms.end(c.start, err)
	c.inflight.Add(-1)
}

func (c *backendCall) SendMsg(m any) error { return c.r.cutOff(c.ClientStream.SendMsg(m)) }

func (c *backendCall) RecvMsg(m any) error { return c.r.cutOff(c.ClientStream.RecvMsg(m)) }
