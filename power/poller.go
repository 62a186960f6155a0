package power

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"time"
)

// Statuser reads a machine's power state; *Executor does it within its
// limits (one call per BMC, global concurrency, circuit breaker).
type Statuser interface {
	Status(ctx context.Context, t Target) (State, error)
}

// Observation is one poll's result. Err's text is bounded and has the
// target's password removed: it may be stored.
type Observation struct {
	Machine string
	State   State
	Err     error
	At      time.Time
}

// maxErrText bounds an observation's error text.
const maxErrText = 512

// Poller polls every watched machine's power state about once per
// Interval, spread with ±Jitter so that a rack's BMCs are not all asked at
// once. Whether a state is wrong is not its business: it reports what it
// saw (the region compares it with the machine's phase).
type Poller struct {
	Power    Statuser
	Interval time.Duration // default 5m
	Jitter   float64       // fraction of Interval, default 0.2
	// Watched returns the machines to poll now; it is called every round.
	Watched func() []Target
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
			name := w.Machine
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

func (p *Poller) poll(ctx context.Context, t Target) {
	st, err := p.Power.Status(ctx, t)
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		st, err = Unknown, scrubbed(err, t.Password)
	}
	o := Observation{Machine: t.Machine, State: st, Err: err, At: time.Now()}
	spread := (rand.Float64()*2 - 1) * p.Jitter * float64(p.Interval)
	p.mu.Lock()
	if p.next == nil {
		p.next = map[string]time.Time{}
	}
	p.next[t.Machine] = time.Now().Add(p.Interval + time.Duration(spread))
	p.mu.Unlock()
	if p.Observe != nil {
		p.Observe(o)
	}
}

// scrubbed is err's text without the password, at most maxErrText bytes.
func scrubbed(err error, password string) error {
	s := redact(err.Error(), password)
	if len(s) > maxErrText {
		s = s[:maxErrText] + "…"
	}
	return errors.New(s)
}
