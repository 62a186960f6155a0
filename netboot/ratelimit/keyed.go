package ratelimit

import (
	"container/list"
	"sync"
	"time"
)

// Keyed is a token bucket per key; safe for concurrent use. A nil Keyed,
// or one with a rate of 0, allows everything.
type Keyed struct {
	rate  float64 // tokens per second
	burst float64
	max   int

	mu    sync.Mutex
	byKey map[string]*list.Element
	lru   list.List // of *bucket, most recently seen first
}

type bucket struct {
	key    string
	tokens float64
	at     time.Time
}

// New returns buckets refilled at perSecond tokens a second up to burst,
// for at most max keys.
func New(perSecond float64, burst, max int) *Keyed {
	return &Keyed{rate: perSecond, burst: float64(burst), max: max, byKey: map[string]*list.Element{}}
}

// Allow takes a token from key's bucket at now. When the bucket is empty
// it reports false and how long until a token is there.
func (l *Keyed) Allow(key string, now time.Time) (bool, time.Duration) {
	if l == nil || l.rate <= 0 {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucket(key, now)
	if d := now.Sub(b.at); d > 0 {
		b.tokens = min(l.burst, b.tokens+d.Seconds()*l.rate)
	}
	b.at = now
	if b.tokens < 1 {
		return false, time.Duration((1 - b.tokens) / l.rate * float64(time.Second))
	}
	b.tokens--
	return true, 0
}

// bucket returns key's bucket, marked most recently seen; a new key gets
// a full one, evicting the least recently seen key when full.
func (l *Keyed) bucket(key string, now time.Time) *bucket {
	if el := l.byKey[key]; el != nil {
		l.lru.MoveToFront(el)
		return el.Value.(*bucket)
	}
	if l.lru.Len() >= l.max {
		old := l.lru.Back()
		delete(l.byKey, old.Value.(*bucket).key)
		l.lru.Remove(old)
	}
	b := &bucket{key: key, tokens: l.burst, at: now}
	l.byKey[key] = l.lru.PushFront(b)
	return b
}

// Len is how many keys have a bucket.
func (l *Keyed) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lru.Len()
}
