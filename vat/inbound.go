package vat

import (
	"log/slog"
	"net"
	"sync"
	"time"
)

// inbound counts the connections Serve holds, chooses which one makes room
// for a new one when all slots are held, and rate-limits the logs of those
// it refuses.
//
// Locking: mu guards every field, and the conn field of each countedConn.
type inbound struct {
	mu      sync.Mutex
	open    int
	conns   map[*countedConn]struct{} // held and not yet closed or evicted
	limited rateLog                   // over MaxConnections, at warn
	refused rateLog                   // failed handshakes, at info
}

// eviction is a held connection chosen to make room, and why.
type eviction struct {
	victim *countedConn
	conn   *Connection // its CapTP connection; nil while in its handshake
	reason string      // RefusedIdle or RefusedKeyShare
}

// admit takes a slot for c, an accepted connection. When max (> 0) are
// held, it takes the slot of a victim instead (see victimLocked), which the
// caller must close; with no victim it reports false.
func (in *inbound) admit(c *countedConn, max int, grace time.Duration) (bool, eviction) {
	in.mu.Lock()
	defer in.mu.Unlock()
	var ev eviction
	if max > 0 && in.open >= max {
		if ev = in.victimLocked(time.Now(), grace, max); ev.victim == nil {
			return false, ev
		}
		delete(in.conns, ev.victim) // it gives its slot back when closed
	}
	if in.conns == nil {
		in.conns = map[*countedConn]struct{}{}
	}
	in.open++
	in.conns[c] = struct{}{}
	return true, ev
}

// victimLocked picks the connection to close for a new one: the oldest that
// restored nothing within grace of its accept (negative grace: none), else
// the newest of the key holding the most connections if it holds more than
// max divided among the keys connected and the newcomer's; nil if neither. Connections still in
// their handshake count as having restored nothing (their handshake is
// bounded too); insecure peers have no key to share.
func (in *inbound) victimLocked(now time.Time, grace time.Duration, max int) eviction {
	var idle *countedConn
	perKey := map[Digest][]*countedConn{}
	for c := range in.conns {
		if grace >= 0 && now.Sub(c.since) >= grace && (c.conn == nil || !c.conn.restored.Load()) {
			if idle == nil || c.since.Before(idle.since) {
				idle = c
			}
		}
		if c.conn != nil && !c.conn.key.digest.IsZero() {
			perKey[c.conn.key.digest] = append(perKey[c.conn.key.digest], c)
		}
	}
	if idle != nil {
		return eviction{victim: idle, conn: idle.conn, reason: RefusedIdle}
	}
	var most []*countedConn
	for _, cs := range perKey {
		if len(cs) > len(most) {
			most = cs
		}
	}
	// The newcomer's key is not known before its handshake: count it as
	// one more key.
	if len(most) < 2 || len(most) <= max/(len(perKey)+1) {
		return eviction{}
	}
	newest := most[0]
	for _, c := range most[1:] {
		if c.since.After(newest.since) {
			newest = c
		}
	}
	return eviction{victim: newest, conn: newest.conn, reason: RefusedKeyShare}
}

// attach records the CapTP connection made over c, if c still holds its
// slot.
func (in *inbound) attach(c *countedConn, conn *Connection) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if _, ok := in.conns[c]; ok {
		c.conn = conn
	}
}

func (in *inbound) leave(c *countedConn) {
	in.mu.Lock()
	in.open--
	delete(in.conns, c)
	in.mu.Unlock()
}

func (in *inbound) count() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.open
}

// rateLog lets one record through per second and counts those held back;
// its owner's lock guards it.
type rateLog struct {
	last       time.Time
	suppressed int
}

// allow reports whether to log now, and how many records were held back
// since the last one.
func (r *rateLog) allow(now time.Time) (bool, int) {
	if now.Sub(r.last) < time.Second {
		r.suppressed++
		return false, 0
	}
	n := r.suppressed
	r.last, r.suppressed = now, 0
	return true, n
}

// refuse reports a refused inbound connection to the OnRefused hook and to
// the log, at level, at most once a second.
func (v *Vat) refuse(reason string, level slog.Level, remote net.Addr, err error) {
	if v.cfg.OnRefused != nil {
		v.cfg.OnRefused(reason)
	}
	v.inbound.mu.Lock()
	r := &v.inbound.refused
	if reason == RefusedMaxConnections {
		r = &v.inbound.limited
	}
	ok, held := r.allow(time.Now())
	v.inbound.mu.Unlock()
	attrs := []any{"reason", reason, "remote", remote.String(), "refused_since_last_log", held}
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	if ok {
		v.log.Log(v.ctx, level, "inbound connection refused", attrs...)
	} else {
		v.log.Debug("inbound connection refused", attrs...)
	}
}

// countedConn is an accepted connection that gives its inbound slot back
// when closed.
type countedConn struct {
	net.Conn
	once  sync.Once
	in    *inbound
	since time.Time   // accepted
	conn  *Connection // once its CapTP connection runs; guarded by in.mu
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.in.leave(c) })
	return err
}

// evict closes the connection ev chose, reporting why.
func (v *Vat) evict(ev eviction) {
	v.refuse(ev.reason, slog.LevelInfo, ev.victim.RemoteAddr(), nil)
	if ev.conn != nil {
		ev.conn.closeBecause(ev.reason)
		return
	}
	ev.victim.Close()
}
