package machine

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/kilnhq/kiln/spec/agentapi"
)

// Progress report throttle: at most one report a second, and one at
// least every 64 MiB when the server keeps up.
const (
	progressEvery = time.Second
	progressBytes = 64 << 20
)

// progressReporter sends progress reports from a goroutine of its own so
// that a slow boot server never stalls a disk write: only the latest
// report waits to be sent, older ones are dropped.
type progressReporter struct {
	send  func(context.Context, agentapi.Progress) error
	log   *slog.Logger
	ch    chan agentapi.Progress
	done  chan struct{}
	once  sync.Once
	last  time.Time
	lastN int64
	every time.Duration
}

// startProgress starts the sender; Close stops it. send may be nil.
func startProgress(ctx context.Context, send func(context.Context, agentapi.Progress) error, log *slog.Logger) *progressReporter {
	p := &progressReporter{send: send, log: log, ch: make(chan agentapi.Progress, 1), done: make(chan struct{}), every: progressEvery}
	go func() {
		defer close(p.done)
		for v := range p.ch {
			if p.send == nil || ctx.Err() != nil {
				continue
			}
			if err := p.send(ctx, v); err != nil {
				p.log.Warn("progress report failed", "phase", v.Phase, "err", err)
			}
		}
	}()
	return p
}

// Update reports written of total bytes (total 0: unknown) when a second
// or 64 MiB have passed since the last report; force reports anyway.
func (p *progressReporter) Update(phase string, written, total int64, force bool) {
	now := time.Now()
	if !force && now.Sub(p.last) < p.every && written-p.lastN < progressBytes {
		return
	}
	p.last, p.lastN = now, written
	v := agentapi.Progress{Phase: phase, BytesWritten: written, TotalBytes: total}
	if total > 0 && written > total {
		v.TotalBytes = 0
	}
	select {
	case <-p.ch: // drop the unsent older report
	default:
	}
	p.ch <- v
}

// Close sends the last pending report and stops the sender.
func (p *progressReporter) Close() {
	p.once.Do(func() { close(p.ch) })
	<-p.done
}
