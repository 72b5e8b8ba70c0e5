package bridge

import (
	"sync"
	"time"
)

// workers runs jobs on goroutines that it keeps for the next job
// (docs/design.md, "Egress workers"): an egress's call handlers, and the
// Sink drains of an egress or an ingress. A job goes to the worker that
// parked last, or to a new goroutine when none is parked, so a job never
// waits for another to end, however long jobs block. At most
// maxIdleWorkers are parked; a worker parked through a whole idlePeriod
// ends (the janitor), and close ends the parked ones at once and the busy
// ones as their jobs return. A nil *workers starts a goroutine per job. It
// is safe for concurrent use.
type workers struct {
	// idlePeriod is how often the janitor ends the workers that stayed
	// parked since its last round (workerIdlePeriod; tests shorten it).
	idlePeriod time.Duration
	quit       chan struct{} // closed by close: the janitor ends

	mu sync.Mutex
	lk struct { // guarded by mu
		// idle is the parked workers, the one parked last at the end. A
		// worker taken from it is handed exactly one job; one closed by
		// the janitor or close ends.
		idle []chan job
		// low is the fewest workers parked at once since the janitor's
		// last round: idle[:low] stayed parked all along.
		low     int
		live    int  // worker goroutines running, parked or busy
		started int  // worker goroutines ever started (tests)
		janitor bool // the janitor runs (only while live > 0)
		closed  bool // close was called: no worker parks any more
	}
}

// job is work for a worker: an egress's call (serviceCall) or a Sink's
// drain (sinkHook). It is an interface holding a pointer, not a func
// value, because binding a func to a call's state costs an allocation per
// job, and a pointer in an interface costs none.
type job interface {
	// work does the job, on the worker's goroutine, with the stack that
	// goroutine was left with (a job that goes deep grows it first:
	// growStack, growDrainStack). It may block as long as it needs.
	work()
}

// maxIdleWorkers bounds a pool's parked workers, as the ingress's
// streamWorkers: 64 stacks of about 32 KiB for an egress's (growStack's
// frame), 16 KiB for an ingress's (growDrainStack's); a job that went
// deeper leaves its worker a larger stack until the garbage collector
// shrinks it.
const maxIdleWorkers = 64

// workerIdlePeriod is how long a parked worker stays unused, at least, for
// the janitor to end it (at most twice that).
const workerIdlePeriod = 10 * time.Second

// newWorkers returns an empty pool; no goroutine runs until the first job.
func newWorkers() *workers {
	return &workers{idlePeriod: workerIdlePeriod, quit: make(chan struct{})}
}

// start runs j on a parked worker, or on a new one if none is parked.
// It never blocks.
func (p *workers) start(j job) {
	if p != nil {
		p.mu.Lock()
		if n := len(p.lk.idle); n > 0 {
			w := p.lk.idle[n-1]
			p.lk.idle[n-1] = nil
			p.lk.idle = p.lk.idle[:n-1]
			p.lk.low = min(p.lk.low, n-1)
			p.mu.Unlock()
			w <- j // buffered: the worker takes it when it wakes
			return
		}
		p.lk.live++
		p.lk.started++
		janitor := !p.lk.janitor && !p.lk.closed
		p.lk.janitor = p.lk.janitor || janitor
		p.mu.Unlock()
		if janitor {
			go p.janitor()
		}
	}
	go p.run(j)
}

// run is a worker: it does j, then the jobs handed to it while it is
// parked, until the pool ends it. It holds nothing of a job while parked.
func (p *workers) run(j job) {
	var next chan job // made when the worker first parks
	ended := false    // by the pool's count: park, retire or close took it off
	defer func() {
		if !ended { // a job ended the goroutine (runtime.Goexit)
			p.gone()
		}
	}()
	for {
		j.work()
		j = nil
		if next == nil {
			if p == nil {
				ended = true
				return
			}
			next = make(chan job, 1)
		}
		if !p.park(next) {
			ended = true
			return
		}
		var ok bool
		if j, ok = <-next; !ok {
			ended = true
			return
		}
	}
}

// gone counts out a busy worker whose goroutine ended during its job
// (runtime.Goexit in a handler), so that the janitor still stops once no
// worker is left.
func (p *workers) gone() {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.lk.live--
	p.mu.Unlock()
}

// park adds the worker whose jobs arrive on next to the idle ones, unless
// the pool is closed or has enough parked (a nil pool keeps none): then
// the worker ends.
func (p *workers) park(next chan job) bool {
	if p == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lk.closed || len(p.lk.idle) >= maxIdleWorkers {
		p.lk.live--
		return false
	}
	p.lk.idle = append(p.lk.idle, next)
	return true
}

// janitor ends, every idlePeriod, the workers that stayed parked since its
// last round, the longest parked first. It ends with the pool, or once no
// worker is left (start starts it again).
func (p *workers) janitor() {
	t := time.NewTicker(p.idlePeriod)
	defer t.Stop()
	for {
		select {
		case <-p.quit:
			return
		case <-t.C:
		}
		if !p.retire() {
			return
		}
	}
}

// retire ends the workers parked since the last round and reports whether
// any worker is left for the janitor to watch.
func (p *workers) retire() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.lk.low
	for _, w := range p.lk.idle[:n] {
		close(w)
	}
	p.lk.idle = append(p.lk.idle[:0], p.lk.idle[n:]...)
	clear(p.lk.idle[len(p.lk.idle):cap(p.lk.idle)])
	p.lk.live -= n
	p.lk.low = len(p.lk.idle)
	if p.lk.live == 0 {
		p.lk.janitor = false
		return false
	}
	return true
}

// close ends the parked workers and the janitor; busy workers end when
// their jobs return, and later jobs get a goroutine each. Calling it
// again does nothing.
func (p *workers) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lk.closed {
		return
	}
	p.lk.closed = true
	close(p.quit)
	for _, w := range p.lk.idle {
		close(w)
	}
	p.lk.live -= len(p.lk.idle)
	p.lk.idle, p.lk.low = nil, 0
}

// workerCounts is a snapshot of a pool's counts, for tests.
type workerCounts struct {
	idle, live, started int
	janitor             bool
}

// counts returns the pool's counts.
func (p *workers) counts() workerCounts {
	p.mu.Lock()
	defer p.mu.Unlock()
	return workerCounts{idle: len(p.lk.idle), live: p.lk.live, started: p.lk.started, janitor: p.lk.janitor}
}
