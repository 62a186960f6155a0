package reconciler

import (
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/spec"
)

// observed is rack r1's observation of m1's power state at t.
func observed(state string, t time.Time) *inventory.PowerObservation {
	return &inventory.PowerObservation{Rack: "r1", State: state, ObservedAt: t}
}

// drifting is a status whose PowerDrift condition is raised.
func drifting(st inventory.MachineStatus, power string, at time.Time) inventory.MachineStatus {
	st.Power, st.PowerAt = power, at
	st.SetCondition(CondPowerDrift, "True", "PoweredOff", "observed off", at)
	return st
}

func rack(policy string) *spec.Rack {
	r := &spec.Rack{Spec: spec.RackSpec{PowerDrift: policy}}
	r.Kind, r.Metadata.Name = spec.KindRack, "r1"
	return r
}

func TestDecidePowerDrift(t *testing.T) {
	p := Policy{PowerDriftGrace: 2 * time.Minute, FastTrackWindow: 10 * time.Minute}
	manual := func(s *spec.MachineSpec) { s.BMC = &spec.BMC{Driver: "manual"} }
	// The last task: a disk boot done at t0, long before the observations.
	old := doneAt(task("diskboot", "done"), t0)
	late := t0.Add(time.Hour)
	// In the fast-track window since late.
	fastTrack := func() inventory.MachineStatus {
		s := at(PhaseReady, StepFastTrack)
		s.TaskID, s.StepStartedAt = "", late
		return s
	}()
	cases := []struct {
		name   string
		m      *spec.Machine
		st     inventory.MachineStatus
		task   *inventory.PowerTask
		power  *inventory.PowerObservation
		rack   *spec.Rack
		after  time.Duration // now = t0 + after
		drift  string        // the condition's status after: "True", "False", "" absent
		event  string        // a reason among the events; "" none at all
		action string        // task written; "" none
	}{
		{name: "deployed-off-drifts", m: testMachine("deployed"), st: at(PhaseDeployed, ""), task: old, power: observed("off", late), after: time.Hour + time.Minute, drift: "True", event: "PowerDrift"},
		{name: "deployed-on-steady", m: testMachine("deployed"), st: at(PhaseDeployed, ""), task: old, power: observed("on", late), after: time.Hour + time.Minute},
		{name: "ready-on-drifts", m: testMachine("ready"), st: at(PhaseReady, ""), task: doneAt(task("off", "done"), t0), power: observed("on", late), after: time.Hour + time.Minute, drift: "True", event: "PowerDrift"},
		{name: "ready-off-steady", m: testMachine("ready"), st: at(PhaseReady, ""), task: doneAt(task("off", "done"), t0), power: observed("off", late), after: time.Hour + time.Minute},
		{name: "within-grace-of-kilns-action", m: testMachine("deployed"), st: at(PhaseDeployed, ""), task: doneAt(task("diskboot", "done"), late), power: observed("off", late.Add(30*time.Second)), after: time.Hour + time.Minute},
		{name: "kilns-action-pending", m: testMachine("ready"), st: at(PhaseReady, ""), task: task("off", "pending"), power: observed("on", late), after: 2 * time.Hour},
		{name: "fast-track-wait", m: testMachine("ready"), st: fastTrack, task: old, power: observed("on", late), after: time.Hour + time.Minute},
		{name: "manual-driver", m: testMachine("deployed", manual), st: at(PhaseDeployed, ""), task: old, power: observed("off", late), after: time.Hour + time.Minute},
		{name: "unknown-no-verdict", m: testMachine("deployed"), st: at(PhaseDeployed, ""), task: old, power: &inventory.PowerObservation{Rack: "r1", State: "unknown", Error: "i/o timeout", ObservedAt: late}, after: time.Hour + time.Minute},
		{name: "unknown-keeps-raised", m: testMachine("deployed"), st: drifting(at(PhaseDeployed, ""), "off", late), task: old, power: observed("unknown", late.Add(5*time.Minute)), after: time.Hour + 6*time.Minute, drift: "True"},
		{name: "working-phase-unchecked", m: testMachine("deployed"), st: at(PhaseDeploying, StepAgent), task: doneAt(task("netboot", "done"), t0), power: observed("off", late), after: 10 * time.Minute},
		{name: "older-observation-than-the-task", m: testMachine("ready"), st: func() inventory.MachineStatus { s := at(PhaseReady, ""); s.Power, s.PowerAt = "off", late; return s }(), task: doneAt(task("off", "done"), late), power: observed("on", late.Add(-time.Minute)), after: 2 * time.Hour},
		{name: "cleared", m: testMachine("deployed"), st: drifting(at(PhaseDeployed, ""), "off", late), task: old, power: observed("on", late.Add(5*time.Minute)), after: time.Hour + 6*time.Minute, drift: "False", event: "PowerDriftCleared"},
		{name: "cleared-on-release", m: testMachine("ready"), st: drifting(at(PhaseDeployed, ""), "off", late), task: old, power: observed("off", late.Add(5*time.Minute)), after: time.Hour + 6*time.Minute, drift: "False", event: "PowerDriftCleared", action: "off"},
		{name: "raised-once", m: testMachine("deployed"), st: drifting(at(PhaseDeployed, ""), "off", late), task: old, power: observed("off", late.Add(5*time.Minute)), after: time.Hour + 6*time.Minute, drift: "True"},
		{name: "correct-deployed-off", m: testMachine("deployed"), st: at(PhaseDeployed, ""), task: old, power: observed("off", late), rack: rack("correct"), after: time.Hour + time.Minute, drift: "True", event: "PowerCorrected", action: "diskboot"},
		{name: "correct-ready-on", m: testMachine("ready"), st: at(PhaseReady, ""), task: doneAt(task("off", "done"), t0), power: observed("on", late), rack: rack("correct"), after: time.Hour + time.Minute, drift: "True", event: "PowerCorrected", action: "off"},
		{name: "correct-not-again-within-grace", m: testMachine("deployed"), st: at(PhaseDeployed, ""), task: doneAt(task("diskboot", "done"), late), power: observed("off", late.Add(time.Minute)), rack: rack("correct"), after: time.Hour + 90*time.Second},
		{name: "report-policy-no-task", m: testMachine("deployed"), st: at(PhaseDeployed, ""), task: old, power: observed("off", late), rack: rack("report"), after: time.Hour + time.Minute, drift: "True", event: "PowerDrift"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := Input{Now: t0.Add(c.after), Machine: c.m, Status: c.st, Task: c.task, Power: c.power, Rack: c.rack,
				Revision: "abc", Image: osImage(""), ImageOnRack: onRack("ready", "")}
			d := Decide(in, p)
			got := ""
			if cd := d.Status.Condition(CondPowerDrift); cd != nil {
				got = cd.Status
			}
			if got != c.drift {
				t.Fatalf("PowerDrift %q, want %q (conditions %+v, events %+v)", got, c.drift, d.Status.Conditions, d.Events)
			}
			var reasons []string
			for _, e := range d.Events {
				reasons = append(reasons, e.Reason)
			}
			joined := " " + strings.Join(reasons, " ") + " "
			if c.event != "" && !strings.Contains(joined, " "+c.event+" ") {
				t.Errorf("events %v, want %s", reasons, c.event)
			}
			if c.event == "" && c.action == "" && len(d.Events) > 0 {
				t.Errorf("unexpected events %v", reasons)
			}
			switch {
			case c.action == "" && d.Task != nil:
				t.Errorf("unexpected task %s", d.Task.Action)
			case c.action != "" && (d.Task == nil || d.Task.Action != c.action):
				t.Errorf("task %+v, want %s", d.Task, c.action)
			}
			if c.power != nil && c.power.ObservedAt.After(c.st.PowerAt) && (d.Status.Power != c.power.State || !d.Status.PowerAt.Equal(c.power.ObservedAt)) {
				t.Errorf("status power %q at %s, want the observation's", d.Status.Power, d.Status.PowerAt)
			}
			// Deciding again on the result, the task pending, raises
			// nothing more and writes no second task.
			tk := c.task
			if d.Task != nil {
				cp := *d.Task
				tk = &cp
			}
			again := Decide(Input{Now: in.Now, Machine: c.m, Status: d.Status, Task: tk, Power: c.power, Rack: c.rack,
				Revision: "abc", Image: in.Image, ImageOnRack: in.ImageOnRack}, p)
			if again.Task != nil || len(again.Events) > 0 {
				t.Errorf("second decision: task %+v events %+v", again.Task, again.Events)
			}
		})
	}
}

// A drift seen within the grace period is looked at again when it ends.
func TestDecidePowerDriftRequeuesAtGraceEnd(t *testing.T) {
	done := t0.Add(time.Hour)
	in := Input{Now: done.Add(30 * time.Second), Machine: testMachine("deployed"), Status: at(PhaseDeployed, ""),
		Task: doneAt(task("diskboot", "done"), done), Power: observed("off", done.Add(20*time.Second))}
	d := Decide(in, Policy{PowerDriftGrace: 2 * time.Minute})
	if d.RequeueAfter != 90*time.Second {
		t.Fatalf("requeue after %s, want 1m30s", d.RequeueAfter)
	}
	in.Now, in.Status = done.Add(2*time.Minute), d.Status
	d = Decide(in, Policy{PowerDriftGrace: 2 * time.Minute})
	c := d.Status.Condition(CondPowerDrift)
	if c == nil || c.Status != "True" || c.Reason != "PoweredOff" || !strings.Contains(c.Message, "observed off at 2026-11-21T13:00:20Z") || !strings.Contains(c.Message, "expects it on") {
		t.Fatalf("condition after the grace: %+v", c)
	}
}
