package rack

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/power"
)

// DefaultPowerPollInterval is how often the leader polls each machine's
// power state when the flag is left alone.
const DefaultPowerPollInterval = 5 * time.Minute

// refreshRounds: an unchanged observation is written again after this
// many poll intervals, so that its age tells a reader the watch still runs.
const refreshRounds = 6

// powerWatch records, for this term, what the leader's poller observes
// of the rack's machines: powerstate/<rack>/<machine>, written (fenced)
// only when the state or the error changes, or refreshRounds intervals
// after the last write.
type powerWatch struct {
	a     *Agent
	fence inventory.Fence
	every time.Duration

	mu   sync.Mutex
	last map[string]inventory.PowerObservation // what this term wrote
}

// powerWatch is the crew member that polls the rack's machines through
// the power executor's limits until ctx ends.
func (a *Agent) powerWatch(fence inventory.Fence) func(context.Context) error {
	w := &powerWatch{a: a, fence: fence, every: a.cfg.PowerPollInterval, last: map[string]inventory.PowerObservation{}}
	return func(ctx context.Context) error {
		p := &power.Poller{Power: a.power, Interval: w.every, Watched: a.pollTargets,
			Observe: func(o power.Observation) { w.record(ctx, o) }}
		return p.Run(ctx)
	}
}

// pollTargets are the rack's machines whose power state can be read: a
// BMC whose driver is not manual, and whose secrets resolve.
func (a *Agent) pollTargets() []power.Target {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []power.Target
	for _, m := range a.inv.Machines {
		if m.Spec.Rack != a.cfg.Rack || m.Spec.BMC == nil || m.Spec.BMC.Driver == "manual" {
			continue
		}
		t, err := power.TargetFor(m)
		if err != nil {
			continue // its power tasks fail with the reason; nothing to poll
		}
		out = append(out, t)
	}
	return out
}

// record writes an observation when it says something new.
func (w *powerWatch) record(ctx context.Context, o power.Observation) {
	obs := inventory.PowerObservation{Rack: w.a.cfg.Rack, State: string(o.State), ObservedAt: o.At.UTC(), Agent: w.a.cfg.ID}
	if o.Err != nil {
		obs.Error = o.Err.Error()
	}
	w.mu.Lock()
	prev, ok := w.last[o.Machine]
	w.mu.Unlock()
	if ok && prev.State == obs.State && prev.Error == obs.Error && obs.ObservedAt.Sub(prev.ObservedAt) < refreshRounds*w.every {
		return
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := w.a.store.PutPowerState(wctx, w.fence, o.Machine, obs)
	switch {
	case err == nil:
		w.mu.Lock()
		w.last[o.Machine] = obs
		w.mu.Unlock()
		if !ok || prev.State != obs.State {
			w.a.log.Info("power state observed", "machine", o.Machine, "power", obs.State, "err", obs.Error)
		}
	case errors.Is(err, inventory.ErrFenceLost), ctx.Err() != nil:
		// No longer leading: the successor polls.
	default:
		w.a.log.Warn("cannot record the observed power state; trying again next poll", "machine", o.Machine, "err", err)
	}
}
