package backoff

import (
	"context"
	"testing"
	"time"
)

func TestPolicy(t *testing.T) {
	t.Parallel()
	p := Policy{Base: 200 * time.Millisecond, Max: 6400 * time.Millisecond}
	for _, tc := range []struct {
		attempt int
		want    time.Duration
	}{
		{-1, 200 * time.Millisecond},
		{0, 200 * time.Millisecond},
		{1, 400 * time.Millisecond},
		{5, 6400 * time.Millisecond},
		{6, 6400 * time.Millisecond},
		{200, 6400 * time.Millisecond}, // no overflow past Max
	} {
		if got := p.Exp(tc.attempt); got != tc.want {
			t.Errorf("Exp(%d) = %s, want %s", tc.attempt, got, tc.want)
		}
		for range 100 {
			if got := p.Delay(tc.attempt); got < tc.want/2 || got > tc.want {
				t.Fatalf("Delay(%d) = %s, want within [%s, %s]", tc.attempt, got, tc.want/2, tc.want)
			}
		}
	}
	if got := Jitter(0); got != 0 {
		t.Errorf("Jitter(0) = %s", got)
	}
}

func TestSleepEndsWithContext(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	Sleep(ctx, time.Hour)
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Sleep ignored a cancelled context for %s", d)
	}
}
