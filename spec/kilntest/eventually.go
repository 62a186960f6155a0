package kilntest

import (
	"testing"
	"time"
)

// tick is how often Eventually checks its condition: short, so a test
// waits at most a few milliseconds past the moment the condition holds.
const tick = 5 * time.Millisecond

// Eventually polls cond every few milliseconds until it holds and returns
// how long that took. If cond still fails after within, the test fails
// with what and the time waited.
func Eventually(t testing.TB, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("timed out after %v waiting for %s", time.Since(start).Round(time.Millisecond), what)
		}
		time.Sleep(tick)
	}
	return time.Since(start)
}
