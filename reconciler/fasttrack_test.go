package reconciler

import (
	"slices"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/spec"
)

func TestDecideFastTrack(t *testing.T) {
	commissioned := func(state string, p Policy, img *inventory.ImageStatus) Decision {
		in := Input{Now: t0.Add(time.Minute), Machine: testMachine(state), Status: at(PhaseCommissioning, StepAgent),
			Task: task("netboot", "done"), Report: result(true, ""), Image: osImage(""), ImageOnRack: img}
		return Decide(in, p)
	}
	reasons := func(d Decision) (out []string) {
		for _, e := range d.Events {
			out = append(out, e.Reason)
		}
		return out
	}

	// Deployed wanted: the running agent takes the deploy, no power task.
	d := commissioned(spec.StateDeployed, Policy{}, onRack("ready", ""))
	st := d.Status
	if st.Phase != PhaseDeploying || st.Step != StepAgent || d.Task != nil || st.TaskID != "" ||
		st.BootPurpose != "deploy" || st.FastTrackFrom != "T" || st.BootTaskID != "T"+FastTrackSuffix {
		t.Fatalf("fast track: %+v task %v", st, d.Task)
	}
	if got := reasons(d); len(got) != 2 || got[0] != "Commissioned" || got[1] != "FastTrack" {
		t.Fatalf("events %v, want Commissioned then FastTrack (no StaleReport)", got)
	}
	// Again on its own output, with the commissioning report still there:
	// nothing more (the commissioning result is not the deploy's).
	in := Input{Now: t0.Add(2 * time.Minute), Machine: testMachine(spec.StateDeployed), Status: st, Task: task("netboot", "done"),
		Report: result(true, ""), Image: osImage(""), ImageOnRack: onRack("ready", "")}
	again := Decide(in, Policy{})
	if again.Status.Phase != PhaseDeploying || again.Task != nil || len(again.Events) != 0 {
		t.Fatalf("re-run: phase %q task %v events %v", again.Status.Phase, again.Task, reasons(again))
	}
	// The deploy's result, filed under the deploy's boot: the disk boots.
	in.Status, in.Report = again.Status, ofTask(result(true, ""), "T"+FastTrackSuffix)
	done := Decide(in, Policy{})
	if done.Task == nil || done.Task.Action != inventory.TaskDiskboot || done.Status.Step != StepDisk {
		t.Fatalf("deploy result: step %q task %+v", done.Status.Step, done.Task)
	}
	// A failed fast-tracked deploy is retried the normal way: a network boot.
	in.Report = ofTask(result(false, "disk too small"), "T"+FastTrackSuffix)
	failed := Decide(in, Policy{})
	if failed.Status.Phase != FailedPrefix+PhaseDeploying || failed.Status.FastTrackFrom != "" {
		t.Fatalf("failed deploy: %+v", failed.Status)
	}

	// Turned off, or ready wanted, or the image not ready: as before (the
	// machine is powered off; a deploy network-boots it again).
	for name, d := range map[string]Decision{
		"off":          commissioned(spec.StateDeployed, Policy{NoFastTrack: true}, onRack("ready", "")),
		"ready":        commissioned(spec.StateReady, Policy{}, onRack("ready", "")),
		"image-absent": commissioned(spec.StateDeployed, Policy{}, nil),
	} {
		if d.Status.FastTrackFrom != "" || slices.Contains(reasons(d), "FastTrack") || d.Task == nil {
			t.Errorf("%s: %v, task %+v; want no fast track", name, reasons(d), d.Task)
		}
	}
	if d := commissioned(spec.StateDeployed, Policy{NoFastTrack: true}, onRack("ready", "")); d.Task.Action != inventory.TaskNetboot || d.Status.Phase != PhaseDeploying {
		t.Errorf("fast track off: phase %q, task %+v; want a deploy's network boot", d.Status.Phase, d.Task)
	}
	if d := commissioned(spec.StateReady, Policy{}, onRack("ready", "")); d.Task.Action != inventory.TaskOff || d.Status.Phase != PhaseReady {
		t.Errorf("ready: phase %q, task %+v; want ready and off", d.Status.Phase, d.Task)
	}
}
