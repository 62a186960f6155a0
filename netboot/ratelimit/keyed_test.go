package ratelimit_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/kilnhq/kiln/netboot/ratelimit"
)

// The limiter forgets the least recently seen key past its size, so a
// flood of fresh keys costs bounded memory.
func TestKeyedIsBounded(t *testing.T) {
	l := ratelimit.New(1, 2, 100)
	now := time.Now()
	for i := range 1000 {
		l.Allow(fmt.Sprint(i), now)
	}
	if l.Len() != 100 {
		t.Fatalf("%d buckets kept", l.Len())
	}
	if ok, _ := l.Allow("999", now); !ok {
		t.Error("a kept key lost its second token")
	}
	if ok, _ := l.Allow("999", now); ok {
		t.Error("burst of 2 not applied to a kept key")
	}
	first, _ := l.Allow("x", now)
	second, _ := l.Allow("x", now)
	third, _ := l.Allow("x", now)
	if !first || !second || third {
		t.Error("burst of 2 not applied to a new key")
	}
}

// The least recently seen key is the one forgotten: a key in use keeps
// its empty bucket while fresh keys flood in.
func TestKeyedEvictsLeastRecentlySeen(t *testing.T) {
	l := ratelimit.New(1, 1, 2)
	now := time.Now()
	l.Allow("busy", now)
	l.Allow("a", now)
	l.Allow("busy", now)
	l.Allow("b", now) // evicts a, not busy
	if ok, _ := l.Allow("busy", now); ok {
		t.Error("busy's empty bucket was forgotten")
	}
}

// An empty bucket refills at the rate, and a refused caller learns how
// long until its next token.
func TestKeyedRefillAndWait(t *testing.T) {
	l := ratelimit.New(2, 1, 10)
	now := time.Now()
	if ok, _ := l.Allow("k", now); !ok {
		t.Fatal("first request refused")
	}
	ok, wait := l.Allow("k", now)
	if ok || wait != 500*time.Millisecond {
		t.Fatalf("second request: %v, wait %v; want refused, 500ms", ok, wait)
	}
	if ok, _ := l.Allow("k", now.Add(wait)); !ok {
		t.Error("refused after the wait it was told")
	}
}

// A rate of 0, or no limiter at all, allows everything.
func TestKeyedUnlimited(t *testing.T) {
	var none *ratelimit.Keyed
	zero := ratelimit.New(0, 0, 1)
	for range 10 {
		if ok, _ := none.Allow("k", time.Now()); !ok {
			t.Fatal("nil limiter refused")
		}
		if ok, _ := zero.Allow("k", time.Now()); !ok {
			t.Fatal("rate 0 refused")
		}
	}
}
