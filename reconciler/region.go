package reconciler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/client/v3/concurrency"
	"golang.org/x/sync/errgroup"
)

// Config configures a region server's reconciler.
type Config struct {
	// ID names this server in the election (default hostname-pid).
	ID string
	// TTL is the election session's TTL: a dead leader is replaced
	// within about this long (default 2s).
	TTL time.Duration
	// Workers reconcile machines in parallel, one machine per worker at
	// a time (default 128; with group commit, more workers make bigger
	// batches).
	Workers int
	// Resync re-queues every machine this often, in case a change was
	// missed (default 5m).
	Resync time.Duration
	Policy Policy
	// EventsPerMachine bounds the events kept per machine (default 100);
	// EventTTL is how long any event lives at most (default 7 days).
	EventsPerMachine int
	EventTTL         time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (c *Config) defaults() {
	if c.ID == "" {
		host, _ := os.Hostname()
		c.ID = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	if c.TTL == 0 {
		c.TTL = 2 * time.Second
	}
	if c.Workers == 0 {
		c.Workers = 128
	}
	if c.Resync == 0 {
		c.Resync = 5 * time.Minute
	}
	if c.EventsPerMachine == 0 {
		c.EventsPerMachine = 100
	}
	if c.EventTTL == 0 {
		c.EventTTL = 7 * 24 * time.Hour
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	c.Policy = c.Policy.withDefaults()
}

// Region is the region server's reconciler: it campaigns for leadership
// among all region servers and, while it leads, reconciles every machine
// and runs the given leader-only components (the source syncer).
type Region struct {
	cfg     Config
	store   *inventory.Store
	log     *slog.Logger
	metrics *metrics
	leader  []func(context.Context) error

	mu  sync.Mutex
	cur *controller // while leading
}

// New returns a region reconciler; its metrics go to reg. whileLeading
// run only on the leader, and stop when it steps down.
func New(cfg Config, store *inventory.Store, reg prometheus.Registerer, log *slog.Logger, whileLeading ...func(context.Context) error) *Region {
	cfg.defaults()
	r := &Region{cfg: cfg, store: store, log: log.With("component", "region", "server", cfg.ID), leader: whileLeading}
	r.metrics = newMetrics(reg, r)
	return r
}

// Run campaigns and reconciles while leading, until ctx ends.
func (r *Region) Run(ctx context.Context) error {
	for attempt := 0; ctx.Err() == nil; attempt++ {
		err := r.term(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			r.log.Warn("leadership term ended", "err", err)
			d := 200 * time.Millisecond << min(attempt, 5)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(d/2 + rand.N(d/2)):
			}
			continue
		}
		attempt = 0
	}
	return nil
}

// Leading reports whether this server leads the region now.
func (r *Region) Leading() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur != nil
}

// term is one campaign and, if won, one term as leader. It returns when
// the session is lost (stepping down at once), ctx ends or a component
// fails.
func (r *Region) term(ctx context.Context) error {
	ttl := max(int(r.cfg.TTL.Round(time.Second)/time.Second), 1)
	session, err := concurrency.NewSession(r.store.Client(), concurrency.WithTTL(ttl), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("election session: %w", err)
	}
	defer session.Orphan()
	el := concurrency.NewElection(session, r.store.Keys().RegionElection())
	if err := el.Campaign(ctx, r.cfg.ID); err != nil {
		session.Close()
		return fmt.Errorf("campaign: %w", err)
	}
	lctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-session.Done():
			cancel(errors.New("election session lost"))
		case <-lctx.Done():
		}
	}()

	c := newController(r, inventory.Fence{Key: el.Key(), Rev: el.Rev()})
	r.mu.Lock()
	r.cur = c
	r.mu.Unlock()
	r.metrics.leader.Set(1)
	r.log.Info("became the region leader")
	defer func() {
		r.mu.Lock()
		r.cur = nil
		r.mu.Unlock()
		r.metrics.leader.Set(0)
	}()

	g, gctx := errgroup.WithContext(lctx)
	g.Go(func() error { return c.run(gctx) })
	for _, fn := range r.leader {
		g.Go(func() error { return fn(gctx) })
	}
	err = g.Wait()
	if cause := context.Cause(lctx); ctx.Err() == nil && cause != nil && !errors.Is(cause, context.Canceled) {
		r.log.Warn("stepping down", "reason", cause)
		return nil // campaign again
	}
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer rcancel()
	if rerr := el.Resign(rctx); rerr != nil {
		r.log.Debug("resign", "err", rerr)
	}
	session.Close()
	if ctx.Err() != nil {
		return nil
	}
	return err
}
