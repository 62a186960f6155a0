package reconciler

import (
	"context"

	"github.com/kilnhq/kiln/inventory"
	"github.com/prometheus/client_golang/prometheus"
)

// powerEntry is a machine's rack's power observation
// (powerstate/<rack>/<machine>).
type powerEntry struct {
	obs    inventory.PowerObservation
	rack   string // the rack whose key it came from
	modRev int64
}

// watchPower follows the racks' power watches, as reports.
func (c *controller) watchPower(ctx context.Context, rev int64) error {
	return c.watchRackKeyed(ctx, c.store.Keys().PowerState("", ""), rev, "power states", c.store.Keys().SplitPowerState, c.putPower,
		func(rack, name string, mod int64) {
			if cur, ok := c.power[name]; ok && cur.rack == rack && cur.modRev < mod {
				delete(c.power, name)
			}
		})
}

// putPower caches an observation newer than the cached one, if wanted;
// it reports whether it did.
func (c *controller) putPower(key string, v []byte, mod int64) bool {
	rack, name, ok := c.store.Keys().SplitPowerState(key)
	if !ok || !c.reportWanted(rack, name) {
		return false
	}
	o, err := inventory.DecodePowerState(v)
	if err != nil {
		c.r.log.Warn("ignoring an undecodable power state", "key", key, "err", err)
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.power[name]; ok && old.rack == rack && old.modRev >= mod {
		return false
	}
	c.power[name] = powerEntry{obs: o, rack: rack, modRev: mod}
	return true
}

var driftDesc = prometheus.NewDesc("kiln_power_drift", "1 while the machine's observed power state contradicts its phase (the PowerDrift condition), 0 otherwise (reported by the region leader).",
	[]string{"machine"}, nil)

// driftCollector reports kiln_power_drift from the leader's caches at
// scrape time, one series per machine in the inventory: a machine that
// leaves it loses its series. A follower reports nothing.
type driftCollector struct{ r *Region }

func (c driftCollector) Describe(ch chan<- *prometheus.Desc) { ch <- driftDesc }

func (c driftCollector) Collect(ch chan<- prometheus.Metric) {
	cur := c.r.current()
	if cur == nil {
		return
	}
	for name, drifting := range cur.drifting() {
		v := 0.0
		if drifting {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(driftDesc, prometheus.GaugeValue, v, name)
	}
}

// drifting says, for each machine in the inventory, whether its
// PowerDrift condition is raised.
func (c *controller) drifting() map[string]bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]bool, len(c.desired))
	for name := range c.desired {
		st := c.status[name].st
		cd := st.Condition(CondPowerDrift)
		out[name] = cd != nil && cd.Status == "True"
	}
	return out
}
