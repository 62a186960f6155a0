package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Policy is an exponential backoff: attempt 0 waits Base, each further
// attempt twice as long, never more than Max.
type Policy struct {
	Base, Max time.Duration
}

// Exp is the wait of attempt without jitter: Base doubled attempt times,
// at most Max.
func (p Policy) Exp(attempt int) time.Duration {
	d := p.Base << min(max(attempt, 0), 30)
	if d > p.Max || d <= 0 {
		d = p.Max
	}
	return d
}

// Delay is the wait of attempt with jitter: between half of Exp(attempt)
// and all of it.
func (p Policy) Delay(attempt int) time.Duration { return Jitter(p.Exp(attempt)) }

// Jitter returns a random duration between d/2 and d.
func Jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return d/2 + rand.N(d/2+1)
}

// Sleep waits d, or less if ctx ends first.
func Sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
