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

// The fast-track window: a machine commissioned while its spec says ready
// stays up, its agent waiting, for Policy.FastTrackWindow; a deploy
// committed within it is handed over, and at its end the machine is
// powered off as after any commissioning.
func TestDecideFastTrackWindow(t *testing.T) {
	p := Policy{FastTrackWindow: 5 * time.Minute}
	commissioned := func(state string, p Policy) Decision {
		in := Input{Now: t0.Add(time.Minute), Machine: testMachine(state), Status: at(PhaseCommissioning, StepAgent),
			Task: task("netboot", "done"), Report: result(true, ""), Image: osImage(""), ImageOnRack: onRack("ready", "")}
		return Decide(in, p)
	}
	reasons := func(d Decision) (out []string) {
		for _, e := range d.Events {
			out = append(out, e.Reason)
		}
		return out
	}
	open := commissioned(spec.StateReady, p)
	st := open.Status
	if st.Phase != PhaseReady || st.Step != StepFastTrack || open.Task != nil || st.BootPurpose != "commission" ||
		open.RequeueAfter != 5*time.Minute || !slices.Equal(reasons(open), []string{"Commissioned"}) || st.Facts == nil {
		t.Fatalf("window: %+v task %v requeue %s events %v", st, open.Task, open.RequeueAfter, reasons(open))
	}
	later := func(after time.Duration, state string, mod ...func(*Input)) Decision {
		in := Input{Now: t0.Add(time.Minute + after), Machine: testMachine(state), Status: st, Task: task("netboot", "done"),
			Report: result(true, ""), Image: osImage(""), ImageOnRack: onRack("ready", "")}
		for _, m := range mod {
			m(&in)
		}
		return Decide(in, p)
	}
	// Within the window, nothing wanted: wait for the rest of it.
	if d := later(2*time.Minute, spec.StateReady); d.Status.Step != StepFastTrack || d.Task != nil || len(d.Events) != 0 || d.RequeueAfter != 3*time.Minute {
		t.Fatalf("in the window: step %q task %v events %v requeue %s", d.Status.Step, d.Task, reasons(d), d.RequeueAfter)
	}
	// A deploy committed within it: handed over, no power task.
	d := later(2*time.Minute, spec.StateDeployed)
	if d.Status.Phase != PhaseDeploying || d.Status.Step != StepAgent || d.Task != nil || d.Status.BootPurpose != "deploy" ||
		d.Status.FastTrackFrom != "T" || d.Status.BootTaskID != "T"+FastTrackSuffix || !slices.Equal(reasons(d), []string{"FastTrack"}) {
		t.Fatalf("deploy in the window: %+v task %v events %v", d.Status, d.Task, reasons(d))
	}
	// A deploy whose image the rack cannot serve yet waits in the window.
	if d := later(2*time.Minute, spec.StateDeployed, func(in *Input) { in.ImageOnRack = nil }); d.Status.Phase != PhaseReady || d.Task != nil || d.RequeueAfter != 3*time.Minute {
		t.Fatalf("image not ready in the window: phase %q task %v requeue %s", d.Status.Phase, d.Task, d.RequeueAfter)
	}
	// The window's end: powered off, once.
	if d := later(5*time.Minute, spec.StateReady); d.Status.Phase != PhaseReady || d.Status.Step == StepFastTrack || d.Task == nil ||
		d.Task.Action != inventory.TaskOff || d.Status.BootPurpose != "off" || !slices.Equal(reasons(d), []string{"FastTrackClosed"}) {
		t.Errorf("end: %+v task %+v events %v; want powered off", d.Status, d.Task, reasons(d))
	}
	// The end with a deploy still waiting for its image: powered off, and
	// the deploy goes the normal way (a network boot once the image is in).
	if d := later(6*time.Minute, spec.StateDeployed, func(in *Input) { in.ImageOnRack = nil }); d.Status.Phase != PhaseDeploying ||
		d.Status.Step != StepImage || d.Task == nil || d.Task.Action != inventory.TaskOff || !slices.Contains(reasons(d), "FastTrackClosed") {
		t.Errorf("end, image not ready: %+v task %+v events %v", d.Status, d.Task, reasons(d))
	}
	// A recommission wanted closes it at once: a network boot to commission.
	if d := later(time.Minute, spec.StateReady, func(in *Input) { in.Machine.Spec.CommissionGeneration = 1 }); d.Status.Phase != PhaseCommissioning ||
		d.Task == nil || d.Task.Action != inventory.TaskNetboot || !slices.Contains(reasons(d), "FastTrackClosed") {
		t.Errorf("recommission: %+v task %+v events %v", d.Status, d.Task, reasons(d))
	}
	off := p
	off.NoFastTrack = true
	in := Input{Now: t0.Add(2 * time.Minute), Machine: testMachine(spec.StateReady), Status: st, Task: task("netboot", "done"), Image: osImage("")}
	if d := Decide(in, off); d.Task == nil || d.Task.Action != inventory.TaskOff || !slices.Contains(reasons(d), "FastTrackClosed") {
		t.Errorf("fast track turned off in the window: task %+v events %v", d.Task, reasons(d))
	}
	// No window configured, or fast track off: powered off at once.
	for name, d := range map[string]Decision{"no window": commissioned(spec.StateReady, Policy{}), "off": commissioned(spec.StateReady, off)} {
		if d.Status.Step == StepFastTrack || d.Task == nil || d.Task.Action != inventory.TaskOff {
			t.Errorf("%s: step %q task %+v; want powered off", name, d.Status.Step, d.Task)
		}
	}
}
