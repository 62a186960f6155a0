package reconciler

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/election"
	"github.com/prometheus/client_golang/prometheus"
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
	return election.Run(ctx, r.store.Client(), r.store.Keys().RegionElection(), r.cfg.ID,
		election.Options{TTL: r.cfg.TTL, Log: r.log}, r.lead)
}

// Leading reports whether this server leads the region now.
func (r *Region) Leading() bool { return r.current() != nil }

// current is this term's controller, or nil when not leading.
func (r *Region) current() *controller {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur
}

// lead is one term as leader: it reconciles and runs the leader-only
// components until the term ends (ctx) or one of them fails.
func (r *Region) lead(ctx context.Context, t election.Term) error {
	c := newController(r, t.Fence())
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

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return c.run(gctx) })
	for _, fn := range r.leader {
		g.Go(func() error { return fn(gctx) })
	}
	return g.Wait()
}
