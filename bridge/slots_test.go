package bridge

import (
	"errors"
	"sync"
	"testing"
)

// TestSlots walks Slots through a sequence of takes: the per-caller limit,
// the shared total, and fair shares past it.
func TestSlots(t *testing.T) {
	s := NewSlots(2, 4)
	steps := []struct {
		caller    string
		perCaller bool // refused for the caller's limit
		shared    bool // refused for the shared total
	}{
		{caller: "a"}, {caller: "a"}, {caller: "a", perCaller: true}, // a's limit
		{caller: "b"}, {caller: "b"}, // the total, 4, is reached
		{caller: "c"},               // under its share: 4/3
		{caller: "d"},               // under its share: 4/4
		{caller: "c", shared: true}, // at its share
		{caller: "e", shared: true}, // 4/5 rounds to 0
		{caller: "a", perCaller: true},
	}
	var taken []string
	for i, st := range steps {
		err := s.Take(st.caller)
		var se *SlotsError
		switch {
		case !st.perCaller && !st.shared && err != nil:
			t.Fatalf("step %d (%s): %v, want admitted", i, st.caller, err)
		case (st.perCaller || st.shared) && !errors.As(err, &se):
			t.Fatalf("step %d (%s): %v, want a *SlotsError", i, st.caller, err)
		case err == nil:
			taken = append(taken, st.caller)
		case se.PerCaller != st.perCaller:
			t.Fatalf("step %d (%s): %v (PerCaller %v), want PerCaller %v", i, st.caller, err, se.PerCaller, st.perCaller)
		case !errors.Is(err, ErrOverloaded):
			t.Errorf("step %d: %v does not wrap ErrOverloaded", i, err)
		}
	}
	if got := s.Active(); got != 6 {
		t.Errorf("Active() = %d, want 6", got)
	}
	if got := s.Callers(); got != 4 {
		t.Errorf("Callers() = %d, want 4", got)
	}
	for _, c := range taken {
		s.Give(c)
	}
	if a, c := s.Active(), s.Callers(); a != 0 || c != 0 {
		t.Errorf("after giving all back: %d active, %d callers; want 0, 0", a, c)
	}
}

// TestSlotsNewcomer checks what each kind promises a caller with nothing
// running while others take all they can: with a soft total, it gets in
// while the callers number at most the total; with a capacity, while a
// slot is free, and the calls never reach the capacity.
func TestSlotsNewcomer(t *testing.T) {
	const limit, total = 8, 16
	t.Run("soft", func(t *testing.T) {
		s := NewSlots(limit, total)
		for caller := range total - 1 {
			for s.Take(caller) == nil {
			}
			if err := s.Take("newcomer"); err != nil {
				t.Fatalf("newcomer while %d callers hold %d: %v", s.Callers(), s.Active(), err)
			}
			s.Give("newcomer")
		}
	})
	t.Run("capped", func(t *testing.T) {
		s := NewCappedSlots(total, total) // the limit is the capacity: only the capacity binds
		held := []int{}
		for caller := 0; s.Active() < total-1; caller++ {
			n := 0
			for s.Take(caller) == nil {
				n++
			}
			held = append(held, n)
			if got := s.Active(); got >= total {
				t.Fatalf("after caller %d: %d active, want under the capacity %d", caller, got, total)
			}
			if s.Active() < total-1 {
				if err := s.Take("newcomer"); err != nil {
					t.Fatalf("newcomer while %d callers hold %d of %d: %v", s.Callers(), s.Active(), total, err)
				}
				s.Give("newcomer")
			}
		}
		if held[0] != total/2 {
			t.Errorf("the first caller alone took %d, want half the capacity, %d", held[0], total/2)
		}
		t.Logf("callers took %v of %d", held, total)
	})
}

// TestSlotsConcurrent takes and gives from many goroutines, on both kinds;
// the counts end at zero (run with -race).
func TestSlotsConcurrent(t *testing.T) {
	for name, s := range map[string]*Slots{"soft": NewSlots(3, 10), "capped": NewCappedSlots(3, 10)} {
		t.Run(name, func(t *testing.T) {
			var wg sync.WaitGroup
			for g := range 8 {
				wg.Go(func() {
					for range 1000 {
						if s.Take(g%4) == nil {
							s.Give(g % 4)
						}
					}
				})
			}
			wg.Wait()
			if a, c := s.Active(), s.Callers(); a != 0 || c != 0 {
				t.Errorf("%d active, %d callers; want 0, 0", a, c)
			}
		})
	}
}
