package bridge

import (
	"fmt"
	"sync"
)

// Slots counts calls running at once by caller, with a limit per caller and
// a total shared among callers, in one of two ways:
//
//   - NewSlots (a soft total, the egress's): a call is admitted when its
//     caller holds fewer than the limit and either all callers together
//     hold fewer than the total, or its caller holds fewer than an equal
//     share of the total among the callers with calls running (itself
//     included). A new caller gets calls through as long as the callers
//     number at most the total; past the total, each newcomer adds at most
//     its share, so k callers past it add about total x (1/2 + ... + 1/k).
//   - NewCappedSlots (a hard capacity, the importer's): a call is admitted
//     when its caller holds fewer than the limit and fewer calls than the
//     capacity has free. The calls never reach the capacity, a caller alone
//     holds at most half of it, and a new caller gets calls through while
//     any slot is free: after k callers took all they could, at least
//     capacity/2^k slots are free.
//
// The egress counts an export's calls per CapTP connection with the first;
// the sidecar counts an import's calls per app connection with the second.
// A Slots is safe for concurrent use.
type Slots struct {
	limit, total int64 // immutable
	capped       bool  // immutable: total is a hard capacity (NewCappedSlots)

	// Locking: mu guards callers and active; it is held only to count.
	mu      sync.Mutex
	callers map[any]int64 // calls running, by caller; no zero entries
	active  int64         // calls running, of every caller
}

// NewSlots returns Slots with limit calls per caller and a soft total
// shared fairly; a limit or total below 1 counts as 1.
func NewSlots(limit, total int) *Slots {
	return &Slots{limit: max(int64(limit), 1), total: max(int64(total), 1), callers: map[any]int64{}}
}

// NewCappedSlots returns Slots with limit calls per caller under a hard
// capacity, of which each caller may hold at most what stays free; a limit
// or capacity below 1 counts as 1 (and a capacity of 1 admits nobody: keep
// it at 2 or more).
func NewCappedSlots(limit, capacity int) *Slots {
	s := NewSlots(limit, capacity)
	s.capped = true
	return s
}

// SlotsError is the error of a call Slots refused. Its Error is
// ErrOverloaded's text with the numbers; errors.Is(err, ErrOverloaded)
// holds.
type SlotsError struct {
	// PerCaller is true when the caller held its limit, false when the
	// callers together held the total and this one its equal share (or,
	// with a capacity, as many as were free).
	PerCaller bool
	// Limit is the caller's limit (PerCaller) or the shared total or
	// capacity.
	Limit int64
	// Callers is how many callers had calls running, the refused one
	// included.
	Callers int64
}

func (e *SlotsError) Error() string {
	if e.PerCaller {
		return fmt.Sprintf("%v for one caller (%d)", ErrOverloaded, e.Limit)
	}
	return fmt.Sprintf("%v (%d, shared by %d callers)", ErrOverloaded, e.Limit, e.Callers)
}

func (e *SlotsError) Unwrap() error { return ErrOverloaded }

// Take admits one call of caller (any comparable value; calls with equal
// keys are one caller's), or returns a *SlotsError. An admitted call must
// be given back with Give, once.
func (s *Slots) Take(caller any) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, running := s.callers[caller]
	callers := int64(len(s.callers))
	if !running {
		callers++
	}
	switch {
	case n >= s.limit:
		return &SlotsError{PerCaller: true, Limit: s.limit, Callers: callers}
	case s.capped && n >= s.total-s.active:
		return &SlotsError{Limit: s.total, Callers: callers}
	case !s.capped && s.active >= s.total && n >= s.total/callers:
		return &SlotsError{Limit: s.total, Callers: callers}
	}
	s.callers[caller] = n + 1
	s.active++
	return nil
}

// Give gives back a call Take admitted for caller.
func (s *Slots) Give(caller any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := s.callers[caller] - 1; n > 0 {
		s.callers[caller] = n
	} else {
		delete(s.callers, caller)
	}
	s.active--
}

// Active returns how many calls run now, of every caller.
func (s *Slots) Active() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return int(s.active)
}

// Callers returns how many callers have calls running now.
func (s *Slots) Callers() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.callers)
}
