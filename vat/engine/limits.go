package engine

import (
	"fmt"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// Limits reported to Options.OnLimit. Each but LimitAnswersHeld and
// ClosedProtocolViolation failed one call or question with an Overloaded
// exception and the connection lived; those two closed the connection.
const (
	// LimitMessageSize: an inbound message over the codec's size limit
	// failed the call it carried, or the question it answered.
	LimitMessageSize = "message size"
	// LimitAnswers: a call or Bootstrap of the peer's was refused: it
	// already had MaxAnswers calls unfinished.
	LimitAnswers = "answers"
	// LimitRestores: an object-id Bootstrap was refused: MaxRestores
	// restores were running or returning.
	LimitRestores = "restores"
	// LimitImports: a call, Return or Resolve would have made this side
	// hold more than MaxImports of the peer's capabilities.
	LimitImports = "imports"
	// LimitExports: a Return or call would have made the peer hold more
	// than MaxExports of this side's capabilities.
	LimitExports = "exports"
	// LimitAnswersHeld: the peer held twice MaxAnswers answers it had not
	// finished, refused ones included, so the connection was closed.
	LimitAnswersHeld = "answers held"
	// ClosedProtocolViolation: the peer broke the protocol (a message
	// that cannot be read or attributed, an id it does not hold), so the
	// connection was aborted with the reason.
	ClosedProtocolViolation = "protocol violation"
)

// DefaultMaxAnswers is the default of Options.MaxAnswers.
const DefaultMaxAnswers = 32768

// DefaultMaxRestores is the default of Options.MaxRestores.
const DefaultMaxRestores = 1024

// restoreLimit returns MaxRestores with its default; 0: no bound.
func (c *Conn) restoreLimit() int { return optLimit(c.opts.MaxRestores, DefaultMaxRestores) }

// MessageTooLarge is what a Codec's Decode returns for an inbound message
// over its size limit that it skipped without keeping it: the connection
// goes on, and the Conn fails the call (Call, Bootstrap) or the question
// (Return) it names with an Overloaded exception. Any other kind of
// message, or one the codec could not read the id of (Known false), ends
// the connection as a protocol violation.
type MessageTooLarge struct {
	// Known says Which and ID were read from the start of the message.
	Known bool
	// Which is the kind of message.
	Which rpccp.Message_Which
	// ID is a Call's or Bootstrap's question id, or a Return's answer id.
	ID uint32
	// ReleaseParamCaps is a Return's field of that name.
	ReleaseParamCaps bool
	// Size is the message's size in bytes (its stream header included);
	// Limit is the codec's limit.
	Size, Limit uint64
}

func (e *MessageTooLarge) Error() string {
	return fmt.Sprintf("inbound message of %d bytes is over the limit of %d bytes", e.Size, e.Limit)
}

// ReadMessageTooLarge fills in e's Known, Which, ID and ReleaseParamCaps
// from prefix, the first bytes of the message's first segment (a whole
// number of words). A message whose root or call does not lie in prefix
// stays unknown.
func ReadMessageTooLarge(e *MessageTooLarge, prefix []byte) {
	words := len(prefix) / 8
	if words == 0 {
		return
	}
	frame := make([]byte, 8+words*8)
	frame[4], frame[5], frame[6], frame[7] = byte(words), byte(words>>8), byte(words>>16), byte(words>>24)
	copy(frame[8:], prefix[:words*8])
	msg, err := capnp.Unmarshal(frame)
	if err != nil {
		return
	}
	defer msg.Release()
	m, err := rpccp.ReadRootMessage(msg)
	if err != nil || !capnp.Struct(m).IsValid() { // a null root says nothing
		return
	}
	switch m.Which() {
	case rpccp.Message_Which_call:
		call, err := m.Call()
		if err != nil {
			return
		}
		e.ID = call.QuestionId()
	case rpccp.Message_Which_bootstrap:
		b, err := m.Bootstrap()
		if err != nil {
			return
		}
		e.ID = b.QuestionId()
	case rpccp.Message_Which_return:
		r, err := m.Return()
		if err != nil {
			return
		}
		e.ID, e.ReleaseParamCaps = r.AnswerId(), r.ReleaseParamCaps()
	}
	e.Known, e.Which = true, m.Which()
}

// limit tells Options.OnLimit of reason.
func (c *Conn) limit(reason string) {
	if c.opts.OnLimit != nil {
		c.opts.OnLimit(reason)
	}
}

// answerLimit returns MaxAnswers with its default; 0: no bound.
func (c *Conn) answerLimit() int { return optLimit(c.opts.MaxAnswers, DefaultMaxAnswers) }

// optLimit is an Options bound n with its default def: 0 for none (n
// negative), def for n zero, else n.
func optLimit(n, def int) int {
	switch {
	case n < 0:
		return 0
	case n == 0:
		return def
	default:
		return n
	}
}

// admitAnswerLocked decides on a new call or Bootstrap of the peer's
// before it is entered in the answers table: refuse (an Overloaded
// exception; the connection lives) when the peer already has MaxAnswers
// calls unfinished, closeReason (the connection ends) when it holds twice
// that. See docs/design.md, "Limits per connection". c.mu is held.
func (c *Conn) admitAnswerLocked() (closeReason string, refuse error) {
	max := c.answerLimit()
	n := len(c.answers)
	switch {
	case max == 0 || n < max:
		return "", nil
	case n >= 2*max:
		return fmt.Sprintf("answer budget: the peer holds %d answers it has not finished (Finish), twice the budget of %d", n, max), nil
	}
	return "", exc.New(exc.Overloaded, "", fmt.Sprintf("too many unfinished calls on this connection (%d): send Finish for returned calls", max))
}

// closeForLimit ends the connection for a per-connection budget: the peer
// gets an Abort with reason, and OnLimit is told.
func (c *Conn) closeForLimit(limit, reason string) {
	c.log.Warn("closing the connection", "reason", reason)
	go func() {
		if c.shutdown(exc.New(exc.Overloaded, "", reason), reason) {
			c.limit(limit)
		}
	}()
}

// refuseAnswerLocked enters a and answers it at once with err (the peer's
// Finish still has to come). The capabilities in giveBack (the call's
// params) go back to the peer, one Release each, unless releaseParamCaps
// says so in the Return. OnLimit hears of limit first, so a refusal the
// peer sees is counted. c.mu is held and released.
func (c *Conn) refuseAnswerLocked(a *answer, err error, giveBack rpccp.CapDescriptor_List, releaseParamCaps bool, limit string) {
	c.answers[a.id] = a
	c.mu.Unlock()
	c.limit(limit) // before the peer can see the refusal
	c.refuseImports(giveBack, 0)
	a.releaseParamCaps = releaseParamCaps
	a.releaseArgs()
	a.PrepareReturn(err)
	a.Return()
}

// handleTooLarge handles a message the codec skipped for its size.
func (c *Conn) handleTooLarge(e *MessageTooLarge) bool {
	if !e.Known {
		c.abort(e.Error() + ", and not a Call or Return whose id could be read")
		return false
	}
	switch e.Which {
	case rpccp.Message_Which_call, rpccp.Message_Which_bootstrap:
		what := "call"
		if e.Which == rpccp.Message_Which_bootstrap {
			what = "Bootstrap"
		}
		err := exc.New(exc.Overloaded, "", fmt.Sprintf("%s message of %d bytes is over the receiving vat's limit of %d bytes", what, e.Size, e.Limit))
		a := c.newAnswer(e.ID)
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return false
		}
		if c.answers[e.ID] != nil {
			c.mu.Unlock()
			c.abort(what + " reuses a question id in use")
			return false
		}
		if reason, _ := c.admitAnswerLocked(); reason != "" {
			c.mu.Unlock()
			c.closeForLimit(LimitAnswersHeld, reason)
			return false
		}
		// Its capabilities were never read: the Return says they are
		// released, so the peer drops them without Release messages.
		c.log.Debug("inbound message over the size limit", "kind", what, "size", e.Size, "limit", e.Limit)
		c.refuseAnswerLocked(a, err, rpccp.CapDescriptor_List{}, true, LimitMessageSize) // unlocks c.mu
		return true
	case rpccp.Message_Which_return:
		return c.returnTooLarge(e)
	}
	c.abort(fmt.Sprintf("%s message of %d bytes is over the limit of %d bytes", e.Which, e.Size, e.Limit))
	return false
}

// returnTooLarge fails the question whose Return was too large; the
// Finish releases the capabilities in the results, which were never read.
func (c *Conn) returnTooLarge(e *MessageTooLarge) bool {
	c.mu.Lock()
	q := c.questionLocked(e.ID)
	if q == nil || q.returned {
		c.mu.Unlock()
		c.abort("Return for an unknown question")
		return false
	}
	q.returned = true
	var paramExports []uint32
	if e.ReleaseParamCaps {
		paramExports, q.paramExports = q.paramExports, nil
	}
	if q.finished { // cancelled: the peer drops the results' capabilities
		c.freeQuestionLocked(q)
		c.mu.Unlock()
		c.releaseExports(paramExports)
		return true
	}
	pipelined := len(q.pipelined) > 0
	q.pipelined = nil
	c.mu.Unlock()
	c.releaseExports(paramExports)
	c.log.Debug("inbound Return over the size limit", "size", e.Size, "limit", e.Limit)
	c.limit(LimitMessageSize)
	if pipelined {
		c.barrier()
	}
	q.resolve(capnp.Ptr{}, exc.New(exc.Overloaded, "", fmt.Sprintf("reply message of %d bytes is over this vat's limit of %d bytes", e.Size, e.Limit)))
	c.mu.Lock()
	q.finished = true
	c.mu.Unlock()
	c.finish(q, true)
	return true
}
