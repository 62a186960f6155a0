package reconciler

import (
	"context"
	"sync"
	"time"

	"github.com/kilnhq/kiln/inventory/backoff"
)

// queue is a level-triggered work queue of machine names, in the manner
// of controller-runtime's: a name is queued at most once; a name being
// worked on is not handed to a second worker, and if it changes meanwhile
// it is queued again when the first worker is done; failures requeue with
// per-name exponential backoff.
type queue struct {
	mu       sync.Mutex
	items    []string
	queued   map[string]bool
	active   map[string]bool
	dirty    map[string]bool // changed while active
	timers   map[string]*delayed
	failures map[string]int
	wake     chan struct{}
	closed   bool

	baseDelay, maxDelay time.Duration
}

type delayed struct {
	at    time.Time
	timer *time.Timer
}

func newQueue(baseDelay, maxDelay time.Duration) *queue {
	return &queue{queued: map[string]bool{}, active: map[string]bool{}, dirty: map[string]bool{},
		timers: map[string]*delayed{}, failures: map[string]int{}, wake: make(chan struct{}, 1),
		baseDelay: baseDelay, maxDelay: maxDelay}
}

// Add queues a name now.
func (q *queue) Add(name string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.addLocked(name)
}

func (q *queue) addLocked(name string) {
	switch {
	case q.closed:
	case q.active[name]:
		q.dirty[name] = true
	case !q.queued[name]:
		q.queued[name] = true
		q.items = append(q.items, name)
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
}

// AddAfter queues a name after d, unless it is due earlier already.
func (q *queue) AddAfter(name string, d time.Duration) {
	if d <= 0 {
		q.Add(name)
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return
	}
	at := time.Now().Add(d)
	if t, ok := q.timers[name]; ok {
		if !t.at.After(at) {
			return
		}
		t.timer.Stop()
	}
	dl := &delayed{at: at}
	dl.timer = time.AfterFunc(d, func() {
		q.mu.Lock()
		defer q.mu.Unlock()
		if q.timers[name] == dl {
			delete(q.timers, name)
		}
		q.addLocked(name)
	})
	q.timers[name] = dl
}

// AddRateLimited requeues a name that failed, later each time.
func (q *queue) AddRateLimited(name string) {
	q.mu.Lock()
	n := q.failures[name]
	q.failures[name] = n + 1
	q.mu.Unlock()
	// Jittered: failures together do not retry together.
	d := backoff.Policy{Base: q.baseDelay, Max: q.maxDelay}.Delay(n)
	q.AddAfter(name, d)
}

// Forget clears a name's failure count after a success.
func (q *queue) Forget(name string) {
	q.mu.Lock()
	delete(q.failures, name)
	q.mu.Unlock()
}

// Get blocks for the next name; ok is false when ctx ends or the queue
// is closed. The caller must call Done(name).
func (q *queue) Get(ctx context.Context) (string, bool) {
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return "", false
		}
		if len(q.items) > 0 {
			name := q.items[0]
			q.items[0] = ""
			q.items = q.items[1:]
			delete(q.queued, name)
			q.active[name] = true
			if len(q.items) > 0 { // pass the wake-up on to another worker
				select {
				case q.wake <- struct{}{}:
				default:
				}
			}
			q.mu.Unlock()
			return name, true
		}
		q.mu.Unlock()
		select {
		case <-ctx.Done():
			return "", false
		case <-q.wake:
		}
	}
}

// Done ends work on a name, queueing it again if it changed meanwhile.
func (q *queue) Done(name string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.active, name)
	if q.dirty[name] {
		delete(q.dirty, name)
		q.addLocked(name)
	}
}

// Len is the number of names waiting (not delayed, not active).
func (q *queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}

// Close stops the timers and wakes every waiting worker.
func (q *queue) Close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	for _, t := range q.timers {
		t.timer.Stop()
	}
	q.timers = map[string]*delayed{}
	close(q.wake)
}
