package reconciler

import (
	"context"
	"sync"
	"testing"
	"time"
)

func TestQueueDeduplicates(t *testing.T) {
	q := newQueue(time.Millisecond, time.Second)
	defer q.Close()
	for range 5 {
		q.Add("a")
	}
	q.Add("b")
	if q.Len() != 2 {
		t.Fatalf("len %d, want 2", q.Len())
	}
	ctx := context.Background()
	if n, _ := q.Get(ctx); n != "a" {
		t.Fatalf("got %s, want a", n)
	}
	if n, _ := q.Get(ctx); n != "b" {
		t.Fatalf("got %s, want b", n)
	}
}

func TestQueueOneWorkerPerKey(t *testing.T) {
	q := newQueue(time.Millisecond, time.Second)
	defer q.Close()
	ctx := context.Background()
	q.Add("a")
	n, _ := q.Get(ctx)
	q.Add("a") // changed while being worked on: not handed out now
	if q.Len() != 0 {
		t.Fatalf("an active key was queued again")
	}
	q.Done(n) // ... but afterwards
	if q.Len() != 1 {
		t.Fatalf("a key changed while active was lost")
	}
}

func TestQueueAddAfterAndRateLimit(t *testing.T) {
	q := newQueue(20*time.Millisecond, time.Second)
	defer q.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	q.AddAfter("late", 50*time.Millisecond)
	q.AddAfter("late", time.Hour) // a later time does not postpone it
	if n, ok := q.Get(ctx); !ok || n != "late" {
		t.Fatalf("got %q %v", n, ok)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Fatalf("delayed key handed out after %s", d)
	}
	q.Done("late")
	q.AddRateLimited("x")
	q.AddRateLimited("x")
	q.mu.Lock()
	fails := q.failures["x"]
	q.mu.Unlock()
	if fails != 2 {
		t.Fatalf("failures %d", fails)
	}
	q.Forget("x")
	if n, ok := q.Get(ctx); !ok || n != "x" {
		t.Fatalf("rate-limited key: %q %v", n, ok)
	}
}

func TestQueueCloseWakesWorkers(t *testing.T) {
	q := newQueue(time.Millisecond, time.Second)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, ok := q.Get(context.Background()); ok {
				t.Error("got a key from an empty, closed queue")
			}
		}()
	}
	q.Close()
	wg.Wait()
}
