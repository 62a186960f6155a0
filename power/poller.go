package power

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"
)

// Watched is a machine whose power state is polled, and the state Kiln
// wants it in (Unknown: no opinion).
type Watched struct {
	Target Target
	Want   State
}

// Observation is one poll's result.
type Observation struct {
	Machine string
	State   State
	Err     error
	Drift   bool // the machine is on when it should be off, or the reverse
	At      time.Time
}

// Poller polls every watched machine's power state about once per
// Interval, spread with ±Jitter so that a rack's BMCs are not all asked at
// once, and reports drift.
type Poller struct {
	Exec     *Executor
	Interval time.Duration // default 5m
	Jitter   float64       // fraction of Interval, default 0.2
	// Watched returns the machines to poll now; it is called every round.
	Watched func() []Watched
	// Observe receives each result; it must not block for long.
	Observe func(Observation)

	mu   sync.Mutex
	next map[string]time.Time
}

// Run polls until ctx ends.
func (p *Poller) Run(ctx context.Context) error {
	if p.Interval == 0 {
		p.Interval = 5 * time.Minute
	}
	if p.Jitter == 0 {
		p.Jitter = 0.2
	}
	p.next = map[string]time.Time{}
	tick := max(p.Interval/20, 10*time.Millisecond)
	t := time.NewTicker(tick)
	defer t.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	busy := map[string]bool{}
	var bmu sync.Mutex
	for {
		now := time.Now()
		seen := map[string]bool{}
		for _, w := range p.Watched() {
			name := w.Target.Machine
			seen[name] = true
			p.mu.Lock()
			due, ok := p.next[name]
			if !ok { // first sight: somewhere in the first interval
				due = now.Add(time.Duration(rand.Float64() * float64(p.Interval)))
				p.next[name] = due
			}
			p.mu.Unlock()
			bmu.Lock()
			skip := busy[name] || now.Before(due)
			if !skip {
				busy[name] = true
			}
			bmu.Unlock()
			if skip {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.poll(ctx, w)
				bmu.Lock()
				delete(busy, name)
				bmu.Unlock()
			}()
		}
		p.mu.Lock()
		for name := range p.next {
			if !seen[name] {
				delete(p.next, name)
			}
		}
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (p *Poller) poll(ctx context.Context, w Watched) {
	st, err := p.Exec.Status(ctx, w.Target)
	if ctx.Err() != nil {
		return
	}
	o := Observation{Machine: w.Target.Machine, State: st, Err: err, At: time.Now()}
	o.Drift = err == nil && w.Want != Unknown && st != Unknown && st != w.Want
	d := 0.0
	if o.Drift {
		d = 1
	}
	p.Exec.metrics.drift.WithLabelValues(w.Target.Machine).Set(d)
	spread := (rand.Float64()*2 - 1) * p.Jitter * float64(p.Interval)
	p.mu.Lock()
	p.next[w.Target.Machine] = time.Now().Add(p.Interval + time.Duration(spread))
	p.mu.Unlock()
	if p.Observe != nil {
		p.Observe(o)
	}
}
