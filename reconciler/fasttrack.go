package reconciler

import (
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/spec"
	"github.com/kilnhq/kiln/spec/agentapi"
)

// Fast track (docs/lifecycle.md): a machine whose spec.state is deployed
// when its commissioning succeeds is not powered off and network-booted
// again: the machine agent that commissioned it is still running, asks
// for its next task, and is given the deploy. The deploy phase gets a
// boot of its own (BootTaskID, so the commissioning result is never taken
// for the deploy's) and records the boot it took over (FastTrackFrom):
// the rack files that boot's later reports under the deploy's boot.

// FastTrackSuffix ends the boot ID of a fast-tracked deploy: the
// commissioning boot's task ID plus this.
const FastTrackSuffix = ".fast-track"

// fastTrack hands a just-commissioned machine's running agent the deploy,
// when the spec asks for one and nothing holds it; it reports whether it
// did. Otherwise commissioning ends as usual (ready, powered off), or in
// the fast-track window (openWindow).
func (d *decider) fastTrack() bool {
	if !d.canFastTrack() {
		return false
	}
	st := d.st()
	from := st.BootTaskID
	st.Attempts = 0
	d.transition(PhaseReady, "Commissioned", "hardware commissioned")
	d.handOver(from)
	return true
}

// canFastTrack says whether the spec asks for a deploy that the running
// agent may take now: fast track is on, the rack can serve the image and
// the rack's cabling policy does not hold the deploy.
func (d *decider) canFastTrack() bool {
	if d.p.NoFastTrack || d.spec().State != spec.StateDeployed || d.imageNotReady() != "" {
		return false
	}
	d.checkCabling()
	return !d.cablingBlocks()
}

// handOver starts the deploy on the agent of boot from, with no power
// task: the deploy's boot is from+FastTrackSuffix.
func (d *decider) handOver(from string) {
	st, sp := d.st(), d.spec()
	d.enter(PhaseDeploying, "FastTrack", "deploying image "+sp.Image+" without a reboot: the commissioning agent (boot "+from+") takes the deploy task")
	st.BootPurpose = agentapi.PurposeDeploy
	st.FastTrackFrom, st.BootTaskID = from, from+FastTrackSuffix
	d.setStep(StepAgent)
}

// openWindow ends a commissioning whose machine is not to be deployed
// (yet) in the fast-track window, when one is configured: ready, still
// powered on, its agent asking for a next task (the boot purpose stays
// commission: not decided), so that a deploy committed within the window
// needs no reboot. It reports whether it did.
func (d *decider) openWindow() bool {
	w := d.p.FastTrackWindow
	if d.p.NoFastTrack || w <= 0 || d.spec().State == spec.StateDeployed {
		return false
	}
	st := d.st()
	st.Attempts = 0
	d.transition(PhaseReady, "Commissioned", "hardware commissioned")
	d.setStep(StepFastTrack)
	st.BootPurpose = agentapi.PurposeCommission // the agent's next task: not decided yet
	st.Message = "commissioned; the agent stays up until " + d.in.Now.Add(w).UTC().Format(time.RFC3339) +
		" for a deploy without a reboot (fast-track window " + w.String() + "), then the machine is powered off"
	d.requeue(w)
	return true
}

// fastTrackWindow decides for a ready machine in its fast-track window:
// a deploy wanted and possible is handed over; the window's end, a new
// commissioning wanted, or a deploy the rack's cabling holds close it
// (the machine is powered off, as at the end of any commissioning). It
// reports whether the machine was in the window, and whether anything
// changed.
func (d *decider) fastTrackWindow() (in, changed bool) {
	st, sp := d.st(), d.spec()
	if st.Step != StepFastTrack {
		return false, false
	}
	if d.canFastTrack() {
		d.handOver(st.BootTaskID)
		return true, true
	}
	left := d.p.FastTrackWindow - d.in.Now.Sub(st.StepStartedAt)
	why := "no deploy within the fast-track window"
	switch {
	case d.p.NoFastTrack:
		why = "fast track is off"
	case sp.CommissionGeneration > st.CommissionedGeneration:
		why = "commissionGeneration was raised"
	case sp.State == spec.StateDeployed && d.cablingBlocks():
		why = "the rack's cabling policy holds the deploy"
	case left > 0:
		d.requeue(left)
		return true, false
	}
	st.Message = ""
	d.event("Normal", "FastTrackClosed", why+": powering the machine off")
	st.BootPurpose = agentapi.PurposeOff
	d.newTask(inventory.TaskOff, "")
	d.setStep("")
	return true, true
}

// cablingBlocks says whether the machine's cabling mismatch holds its
// deploy under the rack's policy.
func (d *decider) cablingBlocks() bool {
	c := d.st().Condition(CondCablingMismatch)
	return c != nil && c.Status == "True" && d.in.Rack != nil && d.in.Rack.Spec.Cabling == "block"
}

// fastTracked reports whether the deploy's agent step is a fast track's:
// the machine is up already, with no power task to wait for.
func (d *decider) fastTracked() bool {
	st := d.st()
	return st.FastTrackFrom != "" && st.Phase == PhaseDeploying && st.Step == StepAgent && st.TaskID == ""
}
