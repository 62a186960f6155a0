package boot

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// limiters is a bounded map of token-bucket rate limiters, one per key
// (a MAC or a source address). When full, an arbitrary entry is evicted:
// a flood of new keys costs memory only up to max entries.
type limiters struct {
	mu    sync.Mutex
	every rate.Limit
	burst int
	max   int
	m     map[string]*rate.Limiter
}

func newLimiters(perSecond float64, burst, max int) *limiters {
	return &limiters{every: rate.Limit(perSecond), burst: burst, max: max, m: map[string]*rate.Limiter{}}
}

// allow reports whether key may make a request now; when not, how long
// until it may.
func (l *limiters) allow(key string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	lim, ok := l.m[key]
	if !ok {
		for k := range l.m {
			if len(l.m) < l.max {
				break
			}
			delete(l.m, k)
		}
		lim = rate.NewLimiter(l.every, l.burst)
		l.m[key] = lim
	}
	r := lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// size is how many keys are tracked.
func (l *limiters) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}
