package vat

import (
	"log/slog"
	"net"
	"sync"
	"time"
)

// inbound counts the connections Serve holds and rate-limits the logs of
// those it refuses.
//
// Locking: mu guards every field.
type inbound struct {
	mu      sync.Mutex
	open    int
	limited rateLog // over MaxConnections, at warn
	refused rateLog // failed handshakes, at info
}

// admit takes a slot for an accepted connection, or reports false when
// max (> 0) are already held.
func (in *inbound) admit(max int) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	if max > 0 && in.open >= max {
		return false
	}
	in.open++
	return true
}

func (in *inbound) leave() {
	in.mu.Lock()
	in.open--
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
	once sync.Once
	in   *inbound
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.in.leave)
	return err
}
