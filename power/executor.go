package power

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"time"

	"github.com/kilnhq/kiln/inventory/backoff"
)

// Policy bounds and retries power operations.
type Policy struct {
	// Timeout bounds one attempt against the BMC (default 30s).
	Timeout time.Duration
	// Attempts is how many times a transient failure is tried (default 4).
	Attempts int
	// Backoff is the first wait between attempts; it doubles up to
	// MaxBackoff, with ±25% jitter (defaults 1s and 15s).
	Backoff, MaxBackoff time.Duration
	// Concurrency bounds calls in flight to all BMCs (default 32).
	Concurrency int
	// BreakerThreshold is how many failed operations in a row (after
	// their retries) open a BMC's breaker (default 3); BreakerCooldown is
	// how long it stays open before one probe is let through (default 1m).
	BreakerThreshold int
	BreakerCooldown  time.Duration
}

func (p *Policy) defaults() {
	if p.Timeout == 0 {
		p.Timeout = 30 * time.Second
	}
	if p.Attempts == 0 {
		p.Attempts = 4
	}
	if p.Backoff == 0 {
		p.Backoff = time.Second
	}
	if p.MaxBackoff == 0 {
		p.MaxBackoff = 15 * time.Second
	}
	if p.Concurrency == 0 {
		p.Concurrency = 32
	}
	if p.BreakerThreshold == 0 {
		p.BreakerThreshold = 3
	}
	if p.BreakerCooldown == 0 {
		p.BreakerCooldown = time.Minute
	}
}

// ErrBreakerOpen means the BMC failed too often lately; calls fail fast
// until the cooldown ends.
var ErrBreakerOpen = errors.New("circuit breaker open: the BMC kept failing; calls fail fast until the cooldown ends")

// ErrTimeout means an attempt did not finish within the policy's timeout.
var ErrTimeout = errors.New("BMC did not answer in time")

type breakerState int

const (
	closed breakerState = iota
	halfOpen
	open
)

// bmc is the per-BMC state: a lock that serialises calls, the breaker,
// and a driver per machine behind it. Drivers are per machine because a
// driver may speak for its machine (the manual driver's instructions name
// it; machines sharing an address may differ in options); the lock and the
// breaker are per BMC because that is what they protect.
type bmc struct {
	lock      chan struct{}
	drivers   map[string]*conn // by machine; used under lock
	failures  int
	state     breakerState
	openUntil time.Time
}

// conn is one machine's driver and the target it was built for.
type conn struct {
	target Target
	driver Driver
}

func (b *bmc) close(machine string) {
	if c := b.drivers[machine]; c != nil && c.driver != nil {
		c.driver.Close()
	}
	delete(b.drivers, machine)
}

// Executor runs power operations under a Policy. It is safe for
// concurrent use; calls to one BMC (one Target.Key) run one at a time,
// whichever machine they are for.
type Executor struct {
	policy  Policy
	factory Factory
	metrics *Metrics
	log     *slog.Logger
	sem     chan struct{}

	mu   sync.Mutex
	bmcs map[string]*bmc
	now  func() time.Time
}

// NewExecutor returns an executor using the registered drivers.
func NewExecutor(p Policy, m *Metrics, log *slog.Logger) *Executor {
	p.defaults()
	for _, d := range Names() {
		m.initDriver(d)
	}
	return &Executor{policy: p, factory: New, metrics: m, log: log, sem: make(chan struct{}, p.Concurrency),
		bmcs: map[string]*bmc{}, now: time.Now}
}

// PowerOn turns the machine on.
func (e *Executor) PowerOn(ctx context.Context, t Target) error {
	return e.do(ctx, t, "on", func(ctx context.Context, d Driver) error { return d.PowerOn(ctx) })
}

// PowerOff turns the machine off: gracefully, or at once when hard.
func (e *Executor) PowerOff(ctx context.Context, t Target, hard bool) error {
	op := "soft_off"
	if hard {
		op = "off"
	}
	return e.do(ctx, t, op, func(ctx context.Context, d Driver) error { return d.PowerOff(ctx, hard) })
}

// PowerCycle restarts the machine (or starts it if it is off).
func (e *Executor) PowerCycle(ctx context.Context, t Target) error {
	return e.do(ctx, t, "cycle", func(ctx context.Context, d Driver) error { return d.PowerCycle(ctx) })
}

// Status reads the power state.
func (e *Executor) Status(ctx context.Context, t Target) (State, error) {
	st := Unknown
	err := e.do(ctx, t, "status", func(ctx context.Context, d Driver) error {
		s, err := d.Status(ctx)
		st = s
		return err
	})
	if err == nil {
		e.setState(t.Machine, st)
	}
	return st, err
}

// SetBoot chooses the next boot device.
func (e *Executor) SetBoot(ctx context.Context, t Target, b Boot) error {
	return e.do(ctx, t, "set_boot", func(ctx context.Context, d Driver) error { return d.SetBoot(ctx, b) })
}

func (e *Executor) setState(machine string, st State) {
	v := -1.0
	switch st {
	case On:
		v = 1
	case Off:
		v = 0
	}
	e.metrics.state.WithLabelValues(machine).Set(v)
}

// Close closes every driver.
func (e *Executor) Close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, b := range e.bmcs {
		for m := range b.drivers {
			b.close(m)
		}
	}
	e.bmcs = map[string]*bmc{}
}

func (e *Executor) bmcFor(t Target) *bmc {
	e.mu.Lock()
	defer e.mu.Unlock()
	b := e.bmcs[t.Key()]
	if b == nil {
		b = &bmc{lock: make(chan struct{}, 1), drivers: map[string]*conn{}}
		e.bmcs[t.Key()] = b
	}
	return b
}

func (e *Executor) do(ctx context.Context, t Target, op string, fn func(context.Context, Driver) error) error {
	fail := func(err error) error { return &OpError{Target: t, Op: op, Err: err} }
	b := e.bmcFor(t)
	select { // one call at a time per BMC
	case b.lock <- struct{}{}:
	case <-ctx.Done():
		return fail(ctx.Err())
	}
	defer func() { <-b.lock }()

	now := e.now()
	if b.state == open {
		if now.Before(b.openUntil) {
			e.metrics.ops.WithLabelValues(t.Driver, op, resultBreakerOpen).Inc()
			return fail(fmt.Errorf("%w (for %s more)", ErrBreakerOpen, b.openUntil.Sub(now).Round(time.Second)))
		}
		b.state = halfOpen
		e.metrics.breaker.WithLabelValues(t.Machine).Set(float64(halfOpen))
	}
	var err error
	for attempt := 1; ; attempt++ {
		err = e.attempt(ctx, b, t, op, fn)
		if err == nil || errors.Is(err, ErrPermanent) || ctx.Err() != nil || attempt >= e.policy.Attempts || b.state == halfOpen {
			break
		}
		wait := e.backoff(attempt)
		e.log.Warn("power operation failed; retrying", "machine", t.Machine, "bmc", t.Address, "op", op,
			"attempt", attempt, "retry_in", wait, "err", redact(err.Error(), t.Password))
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
	e.settle(b, t, err)
	if err != nil {
		return fail(err)
	}
	return nil
}

// attempt makes one call under the timeout and the global limit. A driver
// that ignores its context does not hold the caller: the attempt returns at
// the timeout and the driver is discarded (closed when its call returns).
func (e *Executor) attempt(ctx context.Context, b *bmc, t Target, op string, fn func(context.Context, Driver) error) error {
	select {
	case e.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-e.sem }()
	c := b.drivers[t.Machine]
	if c == nil || c.driver == nil || !sameTarget(c.target, t) {
		b.close(t.Machine)
		d, err := e.factory(t)
		if err != nil {
			return err
		}
		c = &conn{target: t, driver: d}
		b.drivers[t.Machine] = c
	}
	cctx, cancel := context.WithTimeout(ctx, e.policy.Timeout)
	defer cancel()
	start := e.now()
	d := c.driver
	done := make(chan error, 1)
	go func() { done <- fn(cctx, d) }()
	var err error
	select {
	case err = <-done:
	case <-cctx.Done():
		err = cctx.Err()
		c.driver = nil // it may still be busy: never share it again
		go func() { <-done; d.Close() }()
	}
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		err = fmt.Errorf("%w (%s): %w", ErrTimeout, e.policy.Timeout, err)
	}
	e.metrics.duration.WithLabelValues(t.Driver, op).Observe(e.now().Sub(start).Seconds())
	result := resultOK
	switch {
	case err == nil:
	case errors.Is(err, ErrAuth):
		result = resultAuth
	case errors.Is(err, ErrTimeout):
		result = resultTimeout
	default:
		result = resultError
	}
	e.metrics.ops.WithLabelValues(t.Driver, op, result).Inc()
	if t.Driver != "manual" {
		reach := 1.0
		if err != nil && unreachable(err) {
			reach = 0
		}
		e.metrics.reachable.WithLabelValues(t.Machine).Set(reach)
	}
	return err
}

// settle updates the breaker after an operation (with its retries).
func (e *Executor) settle(b *bmc, t Target, err error) {
	switch {
	case err == nil, errors.Is(err, ErrManual), errors.Is(err, ErrUnsupported), errors.Is(err, context.Canceled):
		// The BMC did its part, or the caller gave up: not the BMC's fault.
		if err == nil || b.state == halfOpen {
			b.failures, b.state = 0, closed
		}
	default:
		b.failures++
		if b.state == halfOpen || b.failures >= e.policy.BreakerThreshold {
			b.state, b.openUntil = open, e.now().Add(e.policy.BreakerCooldown)
			e.log.Error("BMC keeps failing; its circuit breaker is open", "machine", t.Machine, "bmc", t.Address,
				"failures", b.failures, "cooldown", e.policy.BreakerCooldown, "err", redact(err.Error(), t.Password))
		}
	}
	e.metrics.breaker.WithLabelValues(t.Machine).Set(float64(b.state))
}

// backoff is the wait after a failed attempt (the first is attempt 1).
// Its jitter is ±25% around the doubling wait rather than backoff.Jitter's
// lower half: Policy documents Backoff as the wait between attempts, and a
// BMC that just refused us should get about that long, not half of it.
func (e *Executor) backoff(attempt int) time.Duration {
	d := backoff.Policy{Base: e.policy.Backoff, Max: e.policy.MaxBackoff}.Exp(attempt - 1)
	return d*3/4 + rand.N(d/2+1)
}

func sameTarget(a, b Target) bool {
	if a.Driver != b.Driver || a.Address != b.Address || a.Username != b.Username || a.Password != b.Password ||
		a.Insecure != b.Insecure || len(a.Options) != len(b.Options) {
		return false
	}
	for k, v := range a.Options {
		if b.Options[k] != v {
			return false
		}
	}
	return true
}

// unreachable reports whether err means the BMC could not be reached at
// all, rather than that it answered with an error.
func unreachable(err error) bool {
	var ne net.Error
	var oe *net.OpError
	return errors.Is(err, ErrTimeout) || errors.As(err, &oe) || (errors.As(err, &ne) && ne.Timeout()) || errors.Is(err, os.ErrDeadlineExceeded)
}
