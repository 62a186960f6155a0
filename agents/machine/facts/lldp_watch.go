package facts

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/kilnhq/kiln/spec/agentapi"
)

// LLDPWatch listens for LLDP frames from the agent's start, so that the
// facts collected later hold the neighbours of switches that send only
// every 30 s. Each interface is listened on until its first frame, or
// until the watch's deadline.
type LLDPWatch struct {
	ctx    context.Context // ends at the deadline
	cancel context.CancelFunc
	listen func(context.Context, string) (*agentapi.Neighbor, error)
	log    *slog.Logger
	wg     sync.WaitGroup

	mu     sync.Mutex
	ifaces map[string]*heard
}

// heard is what one interface's listener found; done closes when it ends.
type heard struct {
	done chan struct{}
	n    *agentapi.Neighbor
	err  error
}

// WatchLLDP starts a watch that ends bound from now, or with ctx. Stop
// ends it and waits for its listeners.
func WatchLLDP(ctx context.Context, bound time.Duration, log *slog.Logger) *LLDPWatch {
	return newLLDPWatch(ctx, bound, listenLLDP, log)
}

func newLLDPWatch(ctx context.Context, bound time.Duration, listen func(context.Context, string) (*agentapi.Neighbor, error), log *slog.Logger) *LLDPWatch {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	wctx, cancel := context.WithTimeout(ctx, bound)
	return &LLDPWatch{ctx: wctx, cancel: cancel, listen: listen, log: log, ifaces: map[string]*heard{}}
}

// Listen starts listening on the named interfaces not listened on yet.
// After the deadline a new listener ends at once, having heard nothing.
func (w *LLDPWatch) Listen(names ...string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, name := range names {
		if w.ifaces[name] != nil {
			continue
		}
		h := &heard{done: make(chan struct{})}
		w.ifaces[name] = h
		w.wg.Go(func() {
			defer close(h.done)
			h.n, h.err = w.listen(w.ctx, name)
			if h.err != nil {
				w.log.Warn("lldp: cannot listen", "interface", name, "err", h.err)
			}
		})
	}
}

// ListenUp listens on every interface that is up, loopback excepted.
func (w *LLDPWatch) ListenUp() error {
	ifs, err := net.Interfaces()
	if err != nil {
		return fmt.Errorf("lldp: list interfaces: %w", err)
	}
	for _, i := range ifs {
		if i.Flags&net.FlagUp != 0 && i.Flags&net.FlagLoopback == 0 {
			w.Listen(i.Name)
		}
	}
	return nil
}

// Neighbours listens on the named interfaces (those not listened on yet
// too) and waits until each has heard its neighbour or failed, or the
// deadline has passed, or ctx ends. It returns the neighbours heard, in
// the order of names, and the error of each interface that could not be
// listened on.
func (w *LLDPWatch) Neighbours(ctx context.Context, names []string) ([]agentapi.Neighbor, []error) {
	w.Listen(names...)
	var found []agentapi.Neighbor
	var errs []error
	for _, name := range names {
		w.mu.Lock()
		h := w.ifaces[name]
		w.mu.Unlock()
		select {
		case <-h.done:
		case <-ctx.Done():
			return found, append(errs, fmt.Errorf("lldp on %s: %w", name, ctx.Err()))
		}
		if h.err != nil {
			errs = append(errs, h.err)
		} else if h.n != nil {
			found = append(found, *h.n)
		}
	}
	return found, errs
}

// Stop ends the watch and waits for its listeners.
func (w *LLDPWatch) Stop() {
	w.cancel()
	w.wg.Wait()
}

// LLDPCollector reports the LLDP neighbours of the machine's interfaces
// that are up: those Watch has heard since the agent started (waiting, up
// to its deadline, for the ones not heard yet), or, without a Watch, those
// heard within Wait from now.
type LLDPCollector struct {
	Watch *LLDPWatch
	Wait  time.Duration
	// Interfaces to listen on; nil: the NICs collected before that are up.
	Interfaces []string
	Log        *slog.Logger
}

// Name implements Collector.
func (LLDPCollector) Name() string { return "lldp" }

// Collect implements Collector. An interface that cannot be listened on
// is logged and skipped; only when none can be is it an error.
func (c LLDPCollector) Collect(ctx context.Context, f *agentapi.Facts) error {
	ifaces := c.Interfaces
	if ifaces == nil {
		for _, n := range f.NICs {
			if n.Carrier || n.OperState == "up" {
				ifaces = append(ifaces, n.Name)
			}
		}
	}
	if len(ifaces) == 0 {
		return nil
	}
	w := c.Watch
	if w == nil {
		wait := c.Wait
		if wait <= 0 {
			wait = DefaultLLDPWait
		}
		w = newLLDPWatch(ctx, wait, listenLLDP, c.Log)
		defer w.Stop()
	}
	found, errs := w.Neighbours(ctx, ifaces)
	f.LLDP = append(f.LLDP, found...)
	if len(errs) == len(ifaces) {
		return errors.Join(errs...)
	}
	return nil
}
