package reconciler_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/reconciler"
	"github.com/kilnhq/kiln/spec"
	"github.com/kilnhq/kiln/spec/kilntest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// driftLab is lab's inventory with machine m on an IPMI BMC (lab's
// machines are manual, which is never checked for drift) and rack r1's
// powerDrift policy.
func driftLab(t *testing.T, machines map[string]string, policy string) *spec.Inventory {
	inv := lab(t, machines)
	if m := inv.Machines["m"]; m != nil {
		m.Spec.BMC = &spec.BMC{Driver: "ipmi", Address: "192.0.2.200"}
	}
	inv.Racks["r1"].Spec.PowerDrift = policy
	return inv
}

// observe writes a power observation as rack's power watch does and
// returns its time.
func (e *env) observe(rack, machine, state string) time.Time {
	e.t.Helper()
	o := inventory.PowerObservation{Rack: rack, State: state, ObservedAt: time.Now().UTC(), Agent: "test"}
	b, _ := json.Marshal(o)
	if _, err := e.cli.Put(e.ctx, e.store.Keys().PowerState(rack, machine), string(b)); err != nil {
		e.t.Fatal(err)
	}
	return o.ObservedAt
}

func (e *env) waitDrift(machine, status string) inventory.MachineStatus {
	e.t.Helper()
	return e.waitStatus(machine, time.Minute, "PowerDrift "+status, func(st inventory.MachineStatus) bool {
		c := st.Condition(reconciler.CondPowerDrift)
		return c != nil && c.Status == status
	})
}

// driftIs reports whether kiln_power_drift has exactly the given series
// (machine → value).
func driftIs(reg *prometheus.Registry, series map[string]int) bool {
	want := "# HELP kiln_power_drift " + driftHelp + "\n# TYPE kiln_power_drift gauge\n"
	for _, m := range slices.Sorted(maps.Keys(series)) {
		want += fmt.Sprintf("kiln_power_drift{machine=%q} %d\n", m, series[m])
	}
	return testutil.GatherAndCompare(reg, strings.NewReader(want), "kiln_power_drift") == nil
}

const driftHelp = "1 while the machine's observed power state contradicts its phase (the PowerDrift condition), 0 otherwise (reported by the region leader)."

func countEvents(evs []inventory.Event, reason string) int {
	n := 0
	for _, ev := range evs {
		if ev.Reason == reason {
			n++
		}
	}
	return n
}

// A deployed machine the rack finds off gets the PowerDrift condition,
// an event and kiln_power_drift 1; found on again, all three clear. An
// observation under another rack's prefix is never read, and the series
// goes with the machine.
func TestPowerDriftReportedAndCleared(t *testing.T) {
	e := newEnv(t)
	machines := map[string]string{"m": "state: deployed", "n": "state: ready"}
	e.apply(driftLab(t, machines, "report"), "r1")
	pol := testPolicy
	pol.PowerDriftGrace = time.Nanosecond // every observation is judged at once
	_, reg := e.region("region-1", reconciler.Config{Policy: pol})
	e.waitPhase("m", "deployed", time.Minute)
	e.waitPhase("n", "ready", time.Minute)
	kilntest.Eventually(t, time.Minute, "kiln_power_drift 0 for m and n", func() bool { return driftIs(reg, map[string]int{"m": 0, "n": 0}) })

	e.observe("r1", "m", "on")
	e.observe("r2", "m", "off") // another rack's word about m, the newest: dropped
	probe := e.observe("r1", "m", "on")
	st := e.waitStatus("m", time.Minute, "the probe", func(st inventory.MachineStatus) bool { return st.PowerAt.Equal(probe) })
	if c := st.Condition(reconciler.CondPowerDrift); c != nil {
		t.Fatalf("rack r2's observation of r1's machine was read: %+v", c)
	}

	e.observe("r1", "m", "off")
	st = e.waitDrift("m", "True")
	if c := st.Condition(reconciler.CondPowerDrift); c.Reason != "PoweredOff" || st.Power != "off" || st.Phase != "deployed" {
		t.Fatalf("drift: %+v power %s phase %s", c, st.Power, st.Phase)
	}
	if n := countEvents(e.events("m"), "PowerDrift"); n != 1 {
		t.Fatalf("%d PowerDrift events, want 1: %+v", n, e.events("m"))
	}
	kilntest.Eventually(t, time.Minute, "kiln_power_drift{machine=m} 1", func() bool { return driftIs(reg, map[string]int{"m": 1, "n": 0}) })
	if n := e.sim.count("m", "diskboot"); n != 1 {
		t.Fatalf("the report policy powered the machine: %d disk boots", n)
	}

	e.observe("r1", "m", "on")
	e.waitDrift("m", "False")
	if n := countEvents(e.events("m"), "PowerDriftCleared"); n != 1 {
		t.Fatalf("%d PowerDriftCleared events, want 1", n)
	}
	kilntest.Eventually(t, time.Minute, "kiln_power_drift{machine=m} 0 again", func() bool { return driftIs(reg, map[string]int{"m": 0, "n": 0}) })

	delete(machines, "m")
	e.apply(driftLab(t, machines, "report"), "r2")
	kilntest.Eventually(t, time.Minute, "m's series gone, n's kept", func() bool { return driftIs(reg, map[string]int{"n": 0}) })
}

// Under powerDrift: correct, a deployed machine found off is booted from
// its disk once; the task's outcome clears the drift.
func TestPowerDriftCorrected(t *testing.T) {
	e := newEnv(t)
	e.apply(driftLab(t, map[string]string{"m": "state: deployed"}, "correct"), "r1")
	pol := testPolicy
	pol.PowerDriftGrace = 50 * time.Millisecond
	e.region("region-1", reconciler.Config{Policy: pol})
	e.waitPhase("m", "deployed", time.Minute)
	e.observe("r1", "m", "off")
	e.waitDrift("m", "True")
	st := e.waitDrift("m", "False")
	if st.Power != "on" || st.Phase != "deployed" {
		t.Fatalf("after the correction: power %s phase %s", st.Power, st.Phase)
	}
	evs := e.events("m")
	if countEvents(evs, "PowerCorrected") != 1 || countEvents(evs, "PowerDrift") != 1 {
		t.Fatalf("events: %+v", evs)
	}
	if n := e.sim.count("m", "diskboot"); n != 2 { // the deploy's, and the correction
		t.Fatalf("%d disk boots, want 2", n)
	}
}

// An observation written before the region's term starts is read with
// the machine's status.
func TestPowerDriftReadAtTermStart(t *testing.T) {
	e := newEnv(t)
	deployed := inventory.MachineStatus{Phase: "deployed", Rack: "r1", DeployedImage: "debian", PhaseStartedAt: time.Now().UTC().Add(-time.Hour)}
	b, _ := json.Marshal(deployed)
	if _, err := e.cli.Put(e.ctx, e.store.Keys().MachineStatus("m"), string(b)); err != nil {
		t.Fatal(err)
	}
	e.observe("r1", "m", "off")
	e.apply(driftLab(t, map[string]string{"m": "state: deployed"}, "report"), "r1")
	e.region("region-1", reconciler.Config{})
	st := e.waitDrift("m", "True")
	if st.Power != "off" || e.sim.count("m", "diskboot") != 0 {
		t.Fatalf("power %s, disk boots %d", st.Power, e.sim.count("m", "diskboot"))
	}
}
