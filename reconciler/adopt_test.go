package reconciler

import (
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/spec"
)

func adoptSpec(s *spec.MachineSpec) { s.Adopt = true }

// adopted is the status Decide gives a machine adopted at t0.
func adopted() inventory.MachineStatus {
	return Decide(Input{Now: t0, Machine: testMachine("deployed", adoptSpec), Revision: "abc"}, Policy{}).Status
}

func TestAdoptRecordsDeployedWithoutActing(t *testing.T) {
	m := testMachine("deployed", adoptSpec, func(s *spec.MachineSpec) { s.DeployGeneration = 2 })
	d := Decide(Input{Now: t0, Machine: m, Revision: "abc"}, Policy{})
	st := d.Status
	if d.Task != nil || d.DeleteTask || st.TaskID != "" || st.BootTaskID != "" {
		t.Fatalf("adoption asked for a power action: task %+v delete %v status %+v", d.Task, d.DeleteTask, st)
	}
	if st.Phase != PhaseDeployed || st.DeployedImage != "debian" || st.DeployedGeneration != 2 || !st.DeployedAt.Equal(t0) || st.BootPurpose != "local" {
		t.Fatalf("adopted status: %+v", st)
	}
	for typ, want := range map[string]string{CondAdopted: "True", CondDeployed: "True", CondCommissioned: "False"} {
		if c := st.Condition(typ); c == nil || c.Status != want || c.Reason != "Adopted" {
			t.Errorf("condition %s: %+v, want %s (Adopted)", typ, c, want)
		}
	}
	if len(d.Events) != 1 || d.Events[0].Reason != "Adopted" || d.Events[0].To != PhaseDeployed {
		t.Fatalf("events %+v, want one Adopted", d.Events)
	}
	for _, says := range []string{"image debian", "no power action", "no boot", "disk untouched", "facts unknown"} {
		if !strings.Contains(d.Events[0].Message, says) {
			t.Errorf("event message %q does not say %q", d.Events[0].Message, says)
		}
	}
	if !AdoptedUncommissioned(&st) {
		t.Error("an adopted machine is not marked as never commissioned")
	}
	// Deciding again on its own output does nothing more.
	again := Decide(Input{Now: t0.Add(time.Hour), Machine: m, Status: st, Revision: "abc"}, Policy{})
	if again.Task != nil || again.DeleteTask || len(again.Events) != 0 || statusChanged(st, again.Status) {
		t.Fatalf("second look at an adopted machine acted: task %+v events %+v\nbefore %+v\nafter  %+v", again.Task, again.Events, st, again.Status)
	}
}

// TestAdoptedMachineReleasedThenCommissioned follows an adopted machine
// through the normal release: powered off, then commissioned (it never
// was), then ready with facts, and no longer marked uncommissioned.
func TestAdoptedMachineReleasedThenCommissioned(t *testing.T) {
	m := testMachine("ready", adoptSpec)
	in := Input{Now: t0.Add(time.Hour), Machine: m, Status: adopted(), Image: osImage(""), ImageOnRack: onRack("ready", "")}
	d := Decide(in, Policy{})
	if d.Status.Phase != PhaseReleasing || d.Task == nil || d.Task.Action != inventory.TaskOff {
		t.Fatalf("release: phase %s task %+v", d.Status.Phase, d.Task)
	}
	off := *d.Task
	off.State, off.DoneAt = inventory.TaskDone, in.Now
	in.Status, in.Task = d.Status, &off
	d = Decide(in, Policy{})
	if d.Status.Phase != PhaseCommissioning || d.Task == nil || d.Task.Purpose != "commission" || d.Status.DeployedImage != "" {
		t.Fatalf("after power-off: phase %s task %+v status %+v", d.Status.Phase, d.Task, d.Status)
	}
	boot := *d.Task
	boot.State, boot.DoneAt = inventory.TaskDone, in.Now
	rep := result(true, "")
	rep.TaskID = boot.ID
	in.Status, in.Task, in.Report = d.Status, &boot, rep
	d = Decide(in, Policy{})
	if d.Status.Phase != PhaseReady || len(d.Status.Facts) == 0 || AdoptedUncommissioned(&d.Status) {
		t.Fatalf("after commissioning: %+v", d.Status)
	}
	if c := d.Status.Condition(CondCommissioned); c == nil || c.Status != "True" {
		t.Fatalf("Commissioned condition: %+v", c)
	}
}
