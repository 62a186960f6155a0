package dhcp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

const (
	maxBatch    = 100              // leases per Save when they come faster than BatchDelay
	saveTimeout = 10 * time.Second // one Save
	drainTime   = time.Second      // saving what is queued when the server stops (within the 2 s shutdown)
)

// errStopped is what waiters get when the server stops before their save.
var errStopped = errors.New("dhcp server stopped")

// committer is the group commit: it gathers leases for BatchDelay (or
// until maxBatch; no wait when leases queued up during the previous
// Save), saves them with one Save, and wakes every waiter of the batch
// with its result. Saves never overlap, so they keep their order.
type committer struct {
	store LeaseStore
	delay time.Duration
	m     *Metrics
	log   *slog.Logger

	in    chan commitReq
	done  chan struct{} // closed when the committer stops for good
	fatal chan error    // the error that stopped it (ErrNotLeader), if any
	chans sync.Pool     // of chan error, one per waiter

	lastWarn time.Time
	failing  bool
}

type commitReq struct {
	lease Lease
	done  chan error // nil: nobody waits
}

func newCommitter(store LeaseStore, delay time.Duration, m *Metrics, log *slog.Logger) *committer {
	return &committer{store: store, delay: delay, m: m, log: log,
		in: make(chan commitReq, 4096), done: make(chan struct{}), fatal: make(chan error, 1),
		chans: sync.Pool{New: func() any { return make(chan error, 1) }}}
}

// save queues l and waits until the batch holding it is stored.
func (c *committer) save(ctx context.Context, l Lease) error {
	select {
	case <-c.done:
		return errStopped
	default:
	}
	ch := c.chans.Get().(chan error)
	select {
	case c.in <- commitReq{lease: l, done: ch}:
	case <-c.done:
		c.chans.Put(ch)
		return errStopped
	case <-ctx.Done():
		c.chans.Put(ch)
		return ctx.Err()
	}
	select {
	case err := <-ch:
		c.chans.Put(ch)
		return err
	case <-c.done: // stopped: answered on the way out, or never
		select {
		case err := <-ch:
			return err
		default:
			return errStopped
		}
	case <-ctx.Done():
		return ctx.Err() // ch is left to the committer's send (buffered), not reused
	}
}

// queue saves l in the next batch without waiting (ended leases: losing
// one leaves the store believing an address is taken, which is safe).
func (c *committer) queue(l Lease) {
	select {
	case c.in <- commitReq{lease: l}:
	default:
		c.log.Warn("lease save queue full; dropping an ended lease", "ip", l.IP, "mac", l.MAC)
	}
}

// run saves batches until ctx ends, then saves what is queued (for a
// little while). A Save that says ErrNotLeader stops it for good.
func (c *committer) run(ctx context.Context) {
	defer close(c.done)
	batch := make([]Lease, 0, maxBatch)
	waiters := make([]chan error, 0, maxBatch)
	add := func(r commitReq) {
		batch = append(batch, r.lease)
		if r.done != nil {
			waiters = append(waiters, r.done)
		}
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case r := <-c.in:
			add(r)
		case <-ctx.Done():
			c.drain(ctx)
			return
		}
		// Leases that queued up during the last Save go at once; a lone
		// one waits BatchDelay for company.
		if c.delay > 0 && len(c.in) == 0 {
			timer.Reset(c.delay)
		fill:
			for len(batch) < maxBatch {
				select {
				case r := <-c.in:
					add(r)
				case <-timer.C:
					break fill
				case <-ctx.Done():
					break fill
				}
			}
			timer.Stop()
		}
	more: // whatever is already queued goes too
		for len(batch) < maxBatch {
			select {
			case r := <-c.in:
				add(r)
			default:
				break more
			}
		}
		err := c.saveBatch(ctx, batch)
		for _, w := range waiters {
			w <- err
		}
		clear(batch)
		batch, waiters = batch[:0], waiters[:0]
		if errors.Is(err, ErrNotLeader) {
			c.fatal <- err
			c.fail(err)
			return
		}
	}
}

// drain saves what is queued when the server stops.
func (c *committer) drain(ctx context.Context) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), drainTime)
	defer cancel()
	for {
		var batch []Lease
		var waiters []chan error
	fill:
		for len(batch) < maxBatch {
			select {
			case r := <-c.in:
				batch = append(batch, r.lease)
				if r.done != nil {
					waiters = append(waiters, r.done)
				}
			default:
				break fill
			}
		}
		if len(batch) == 0 {
			return
		}
		err := c.saveBatch(dctx, batch)
		for _, w := range waiters {
			w <- err
		}
		if err != nil {
			c.fail(errStopped)
			return
		}
	}
}

// fail answers everything still queued with err.
func (c *committer) fail(err error) {
	for {
		select {
		case r := <-c.in:
			if r.done != nil {
				r.done <- err
			}
		default:
			return
		}
	}
}

func (c *committer) saveBatch(ctx context.Context, batch []Lease) error {
	sctx, cancel := context.WithTimeout(ctx, saveTimeout)
	defer cancel()
	// The store gets its own slice: it may keep it.
	leases := append(make([]Lease, 0, len(batch)), batch...)
	start := time.Now()
	err := c.store.Save(sctx, leases)
	c.m.observeSave(time.Since(start), len(leases), err)
	if err != nil {
		err = fmt.Errorf("save %d leases: %w", len(leases), err)
		if !c.failing || time.Since(c.lastWarn) > 10*time.Second {
			c.log.Warn("cannot save leases: only known reservations and stored leases are acknowledged", "err", err)
			c.lastWarn = time.Now()
		}
		c.failing = true
		return err
	}
	if c.failing {
		c.log.Info("saving leases again")
		c.failing = false
	}
	return nil
}
