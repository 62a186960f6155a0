package reconciler

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
)

func TestDecidePowerRequest(t *testing.T) {
	p := Policy{PowerDriftGrace: 2 * time.Minute}
	ask := func(st inventory.MachineStatus, action string, force bool) inventory.MachineStatus {
		st.PowerRequest = &inventory.PowerRequest{Action: action, By: "alice", At: t0, Force: force}
		return st
	}
	reasons := func(d Decision) (out []string) {
		for _, e := range d.Events {
			out = append(out, e.Reason)
		}
		return out
	}
	decide := func(state string, st inventory.MachineStatus, after time.Duration, power *inventory.PowerObservation, task *inventory.PowerTask) Decision {
		return Decide(Input{Now: t0.Add(after), Machine: testMachine(state), Status: st, Task: task, Power: power,
			Image: osImage(""), ImageOnRack: onRack("ready", "")}, p)
	}
	// A ready machine switched on: a disk boot, the wanted state on.
	d := decide("ready", ask(at(PhaseReady, ""), "on", false), time.Minute, nil, doneAt(task("off", "done"), t0))
	if d.Task == nil || d.Task.Action != inventory.TaskDiskboot || d.Status.PowerWanted != "on" || d.Status.PowerRequest != nil ||
		!slices.Contains(reasons(d), "PowerAction") {
		t.Fatalf("on: task %+v status %+v events %v", d.Task, d.Status, reasons(d))
	}
	// Found on after the grace: no drift, since it was asked for.
	st := d.Status
	finished := *d.Task
	finished.State = inventory.TaskDone
	done := doneAt(&finished, t0.Add(2*time.Minute))
	again := decide("ready", st, time.Hour, observed("on", t0.Add(time.Hour)), done)
	if c := again.Status.Condition(CondPowerDrift); c != nil && c.Status == "True" {
		t.Fatalf("a machine switched on by request is drift: %+v", c)
	}
	// Without the request, the same observation is drift.
	st.PowerWanted = ""
	ctl := decide("ready", st, time.Hour, observed("on", t0.Add(time.Hour)), done)
	if c := ctl.Status.Condition(CondPowerDrift); c == nil || c.Status != "True" {
		t.Fatalf("the control case raised no drift: %+v %v", ctl.Status, reasons(ctl))
	}
	// A deployed machine switched off.
	if d := decide("deployed", ask(at(PhaseDeployed, ""), "off", false), time.Minute, nil, nil); d.Task == nil || d.Task.Action != inventory.TaskOff || d.Status.PowerWanted != "off" {
		t.Fatalf("off: task %+v status %+v", d.Task, d.Status)
	}
	// Deploying: refused, nothing written but the event.
	dep := at(PhaseDeploying, StepAgent)
	r := decide("deployed", ask(dep, "cycle", false), time.Minute, nil, task("netboot", "done"))
	if r.Status.Phase != PhaseDeploying || r.Task != nil || r.Status.PowerRequest != nil || !slices.Contains(reasons(r), "PowerRefused") {
		t.Fatalf("refused: phase %s task %+v events %v", r.Status.Phase, r.Task, reasons(r))
	}
	// Forced: the deploy fails, waits for a person, and the action is done.
	f := decide("deployed", ask(dep, "off", true), time.Minute, nil, task("netboot", "done"))
	if f.Status.Phase != FailedPrefix+PhaseDeploying || f.Task == nil || f.Task.Action != inventory.TaskOff ||
		!strings.Contains(f.Status.Reason, "power off asked by alice (forced)") || f.Status.Attempts < 3 {
		t.Fatalf("forced: %+v task %+v", f.Status, f.Task)
	}
	// The wanted state lasts the phase.
	rel := decide("ready", inventory.MachineStatus{Phase: PhaseDeployed, Rack: "r1", PowerWanted: "off", DeployedImage: "debian"}, time.Minute, nil, nil)
	if rel.Status.Phase != PhaseReleasing || rel.Status.PowerWanted != "" {
		t.Fatalf("release: phase %s wanted %q", rel.Status.Phase, rel.Status.PowerWanted)
	}
}
