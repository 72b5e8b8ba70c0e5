package vat

import (
	"time"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// Lazy messages are the codec's housekeeping that no one waits for: a
// Finish for a question whose Return has come (go-capnp sends it 250 ms
// after the Return) and a Release of an imported capability. Sent on its
// own, each costs a write (a TLS record and a syscall) here and a read and a
// wake-up on the peer. The codec queues a lazy message in order with the
// others but does not wake its writer for it: it leaves with the next
// message that is not lazy, or when it has waited lazyDelay, or when lazy
// bytes pending reach maxLazyPending, or on Close.
//
// A successful Return may be lazy too, when the call it answers was to a
// method Config.LazyReturn names (the acknowledgement of a capnp stream
// call, which only feeds the caller's flow control) and carried at most
// lazyCallMax bytes. An exception Return is never lazy.
//
// A Finish that cancels a call (go-capnp sends it when the call's context
// ends before the Return; it asks the peer to release the result's
// capabilities, the schema's default) is not lazy: the peer cancels the
// call's handler when it arrives.
const (
	// lazyDelay bounds how long a lazy message waits for company. go-capnp
	// already holds a Finish back 250 ms after its Return, so a few
	// milliseconds more change nothing for the peer (it frees the answer's
	// results a little later; a Release lets it drop an export a little
	// later). It is well above the gap between calls on a connection busy
	// enough for syscalls to matter (a unary loop with one call in flight
	// through two sidecars calls every 0.3-0.5 ms), so on such a
	// connection lazy messages always ride with a call and the timer never
	// causes a write of its own.
	lazyDelay = 5 * time.Millisecond
	// maxLazyPending is how many bytes of lazy messages may wait: beyond
	// it they are due at once (a Finish is about 40 bytes; this is over a
	// thousand of them).
	maxLazyPending = 64 << 10
	// lazyCallMax is the largest received call whose Return may be lazy:
	// a stream of large sends would fill the caller's flow window within
	// the lazy delay, and costs more in bytes than in messages anyway.
	lazyCallMax = 64 << 10
	// lazyAckMax bounds the bytes of calls that waiting lazy Returns
	// answer: beyond it they are due at once, so that a sender whose flow
	// window those Returns would reopen (the bridge's is 12 MiB) does not
	// wait for the timer.
	lazyAckMax = 1 << 20
	// lazyAckCalls bounds how many lazy Returns wait, however small the
	// calls they answer: a sender may also bound its calls in flight by
	// count (the bridge's, at 256 Sink sends), and one full by count
	// should not wait for the timer either.
	lazyAckCalls = 64
)

// noAnswer is classifyLazy's answer id for a message that is not a candidate
// lazy Return.
const noAnswer = ^uint64(0)

// classifyLazy reports whether m is lazy by its kind alone (isLazy), or,
// for a Return while the codec tracks answers (lazyReturn is set), its
// answer id and whether it carries results: the call it answers decides
// (takeLazyAnswer).
func (c *codec) classifyLazy(m *capnp.Message) (lazy bool, answer uint64, results bool) {
	root, err := rpccp.ReadRootMessage(m)
	if err != nil {
		return false, noAnswer, false
	}
	if root.Which() == rpccp.Message_Which_return {
		if c.lazyReturn == nil {
			return false, noAnswer, false
		}
		ret, err := root.Return()
		if err != nil {
			return false, noAnswer, false
		}
		return false, uint64(ret.AnswerId()), ret.Which() == rpccp.Return_Which_results
	}
	return isLazy(root), noAnswer, false
}

// noteCall remembers the question id and size of m if m is a call to a
// method lazyReturn names, small enough, whose results go to the caller (a
// Return answers it): its Return may then be lazy.
func (c *codec) noteCall(root rpccp.Message, m *capnp.Message) {
	if root.Which() != rpccp.Message_Which_call {
		return
	}
	call, err := root.Call()
	if err != nil || !c.lazyReturn(call.InterfaceId(), call.MethodId()) ||
		call.SendResultsTo().Which() != rpccp.Call_sendResultsTo_Which_caller {
		return
	}
	size, err := m.TotalSize()
	if err != nil || size > lazyCallMax {
		return
	}
	c.mu.Lock()
	if c.lazyAnswers == nil {
		c.lazyAnswers = make(map[uint32]uint32)
	}
	c.lazyAnswers[call.QuestionId()] = uint32(size)
	c.mu.Unlock()
}

// takeLazyAnswer reports whether the Return for answer may be lazy, and
// forgets answer: its question id may be used again once the peer has the
// Return. Only results are lazy, not an exception or the other kinds of
// Return; and once the lazy Returns waiting answer more than lazyAckMax
// bytes of calls, pending is due. The caller holds mu.
func (c *codec) takeLazyAnswer(answer uint64, results bool) bool {
	id := uint32(answer)
	size, ok := c.lazyAnswers[id]
	if !ok {
		return false
	}
	delete(c.lazyAnswers, id)
	if !results {
		return false
	}
	c.lazyAcks++
	if c.lazyAcked += int(size); c.lazyAcked > lazyAckMax || c.lazyAcks >= lazyAckCalls {
		c.due = true
	}
	return true
}

// isLazy reports whether root is an rpc Message that may wait by its kind
// alone: a Release, or a Finish that keeps the result's capabilities (the
// one go-capnp sends after a Return).
func isLazy(root rpccp.Message) bool {
	switch root.Which() {
	case rpccp.Message_Which_release:
		return true
	case rpccp.Message_Which_finish:
		fin, err := root.Finish()
		return err == nil && !fin.ReleaseResultCaps()
	}
	return false
}

// queuedLazy accounts for a lazy message just appended to pending: when
// nothing due is pending, it starts the wait (arming the timer if it is not
// armed), and it makes pending due when lazy bytes reach maxLazyPending.
// The caller holds mu.
func (c *codec) queuedLazy() {
	if c.due {
		return // it leaves with what is due
	}
	if len(c.pending) >= maxLazyPending {
		c.due = true
		return
	}
	if c.lazySince.IsZero() {
		c.lazySince = time.Now()
	}
	if !c.timerOn {
		c.timerOn = true
		if c.lazyTimer == nil {
			c.lazyTimer = time.AfterFunc(c.lazyDelay, c.lazyTimeout)
		} else {
			c.lazyTimer.Reset(c.lazyDelay)
		}
	}
}

// lazyTimeout runs when the lazy timer fires: lazy messages that have waited
// lazyDelay become due; younger ones (the older ones left with a write since
// the timer was armed) get the rest of their wait. The timer is not armed
// again when nothing lazy waits, so an idle codec has no timer running.
func (c *codec) lazyTimeout() {
	c.mu.Lock()
	due := false
	waited := time.Since(c.lazySince)
	switch {
	case c.closing || c.lazySince.IsZero():
		c.timerOn = false // Close flushes, or nothing lazy waits
	case waited < c.lazyDelay:
		c.lazyTimer.Reset(c.lazyDelay - waited)
	default:
		c.timerOn = false
		c.due = true
		due = true
	}
	c.mu.Unlock()
	if due {
		c.signal()
	}
}

// stopLazyTimer disarms the lazy timer; the caller holds mu. A lazyTimeout
// already running sees closing or nothing to do.
func (c *codec) stopLazyTimer() {
	if c.lazyTimer != nil {
		c.lazyTimer.Stop()
	}
	c.timerOn = false
}
