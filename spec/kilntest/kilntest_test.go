package kilntest_test

import (
	"fmt"
	"runtime"
	"strings"
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

// fatalTB records Fatalf and ends its goroutine, as testing.T does.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper() {}
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func TestEventuallyFailsNamingWhatAndHowLong(t *testing.T) {
	f := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		kilntest.Eventually(f, 20*time.Millisecond, "the moon", func() bool { return false })
	}()
	<-done
	if !strings.Contains(f.msg, "the moon") || !strings.Contains(f.msg, "ms") {
		t.Errorf("failure %q names neither what nor how long", f.msg)
	}
}
