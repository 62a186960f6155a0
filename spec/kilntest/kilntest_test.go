package kilntest_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/kilnhq/kiln/spec/kilntest"
)

func TestEventuallyReturnsOnceTheConditionHolds(t *testing.T) {
	var n atomic.Int32
	took := kilntest.Eventually(t, 5*time.Second, "third poll", func() bool { return n.Add(1) >= 3 })
	if took > time.Second {
		t.Errorf("took %v for three polls", took)
	}
}

func TestClock(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := kilntest.NewClock(start)
	c.Add(time.Minute)
	if got := c.Now(); !got.Equal(start.Add(time.Minute)) {
		t.Errorf("after Add: %v", got)
	}
	c.Set(start)
	if got := c.Now(); !got.Equal(start) {
		t.Errorf("after Set: %v", got)
	}
}
