package reconciler

import (
	"fmt"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/spec/agentapi"
)

// DefaultPowerDriftGrace is how long after Kiln's own power action an
// observed power state is not taken as drift, when none is set.
const DefaultPowerDriftGrace = 2 * time.Minute

// Power states a rack observes.
const (
	powerOn      = "on"
	powerOff     = "off"
	powerUnknown = "unknown"
)

// Rack power-drift policies (spec.RackSpec.PowerDrift).
const (
	driftReport  = "report"
	driftCorrect = "correct"
)

// observePower records the rack's newest power observation in the
// status, when it is newer than what the status holds (a task's outcome
// or an earlier observation).
func (d *decider) observePower() {
	o, st := d.in.Power, d.st()
	if o == nil || o.State == "" || !o.ObservedAt.After(st.PowerAt) {
		return
	}
	st.Power, st.PowerAt = o.State, o.ObservedAt
}

// expectedPower is the power state asked for by a power action in this
// phase, else the one the machine's phase implies, or ""
// when the phase implies none: working phases power the machine
// themselves, a failed one was powered off, maintenance leaves it to a
// person, and the fast-track wait keeps the commissioning agent running.
func (d *decider) expectedPower() string {
	st := d.st()
	switch {
	case st.PowerWanted != "" && !working(st.Phase):
		return st.PowerWanted // a power action asked for it in this phase
	case st.Phase == PhaseDeployed:
		return powerOn
	case st.Phase == PhaseReady && st.Step != StepFastTrack:
		return powerOff
	}
	return ""
}

// manualPower: a person powers the machine; there is nothing to poll
// and nothing Kiln could correct.
func (d *decider) manualPower() bool {
	if b := d.spec().BMC; b != nil && b.Driver == "manual" {
		return true
	}
	c := d.st().Condition(CondPowerManual)
	return c != nil && c.Status == "True"
}

// powerDrift compares the newest known power state with what the phase
// expects, after the phase was decided: it raises or clears the
// PowerDrift condition and, under the rack's correct policy, asks the
// rack to power the machine back once per drift.
func (d *decider) powerDrift() {
	st, now := d.st(), d.in.Now
	expect := d.expectedPower()
	switch {
	case expect == "":
		d.clearDrift("not checked while the machine is " + orNew(st.Phase))
		return
	case d.manualPower():
		d.clearDrift("a person powers this machine (manual driver)")
		return
	case st.Power == "" || st.Power == powerUnknown:
		return // no verdict: the BMC did not answer (PowerReachable says so)
	case st.Power == expect:
		d.clearDrift(fmt.Sprintf("the machine is %s again, as phase %s expects", st.Power, st.Phase))
		return
	}
	if until, ok := d.driftGraceUntil(); !ok {
		return // Kiln's own power action is under way
	} else if now.Before(until) {
		d.requeue(until.Sub(now))
		return
	}
	if c := st.Condition(CondPowerDrift); c != nil && c.Status == "True" {
		return // raised already; said once
	}
	reason := "PoweredOff"
	if st.Power == powerOn {
		reason = "PoweredOn"
	}
	msg := fmt.Sprintf("observed %s at %s; phase %s expects it %s", st.Power, st.PowerAt.UTC().Format(time.RFC3339), st.Phase, expect)
	st.SetCondition(CondPowerDrift, "True", reason, msg, now)
	d.event("Warning", "PowerDrift", "power drift: "+msg)
	if d.driftPolicy() == driftCorrect {
		d.correctDrift(expect)
	}
}

// driftGraceUntil is when the grace after Kiln's last power action on
// the machine ends; ok is false while that action is not finished.
func (d *decider) driftGraceUntil() (until time.Time, ok bool) {
	last := d.st().PhaseStartedAt
	if t := d.task; t != nil {
		if !t.Finished() {
			return time.Time{}, false
		}
		if t.DoneAt.After(last) {
			last = t.DoneAt
		}
	}
	return last.Add(d.p.PowerDriftGrace), true
}

func (d *decider) driftPolicy() string {
	if r := d.in.Rack; r != nil && r.Spec.PowerDrift != "" {
		return r.Spec.PowerDrift
	}
	return driftReport
}

// correctDrift writes the one power task that puts the machine back:
// a disk boot for a deployed machine found off, off for a ready one
// found on. The task restarts the grace period, so a machine that keeps
// drifting is corrected at most once per grace period.
func (d *decider) correctDrift(expect string) {
	action, how := inventory.TaskOff, "powering it off"
	if expect == powerOn {
		action, how = inventory.TaskDiskboot, "booting it from its disk"
		d.st().BootPurpose = agentapi.PurposeLocal
	}
	d.newTask(action, "")
	d.event("Normal", "PowerCorrected", "rack "+d.st().Rack+"'s policy is powerDrift: correct: "+how)
}

// clearDrift ends a raised PowerDrift condition, saying why.
func (d *decider) clearDrift(why string) {
	st := d.st()
	if c := st.Condition(CondPowerDrift); c == nil || c.Status != "True" {
		return
	}
	st.SetCondition(CondPowerDrift, "False", "Cleared", why, d.in.Now)
	d.event("Normal", "PowerDriftCleared", "power drift cleared: "+why)
}
