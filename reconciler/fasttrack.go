package reconciler

import (
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
// did. Otherwise commissioning ends as usual (ready, powered off).
func (d *decider) fastTrack() bool {
	st, sp := d.st(), d.spec()
	if d.p.NoFastTrack || sp.State != spec.StateDeployed || d.imageNotReady() != "" {
		return false
	}
	d.checkCabling() // a rack's cabling: block holds the deploy: no fast track then
	if c := st.Condition(CondCablingMismatch); c != nil && c.Status == "True" && d.in.Rack != nil && d.in.Rack.Spec.Cabling == "block" {
		return false
	}
	from := st.BootTaskID
	st.Attempts = 0
	d.transition(PhaseReady, "Commissioned", "hardware commissioned")
	d.enter(PhaseDeploying, "FastTrack", "deploying image "+sp.Image+" without a reboot: the commissioning agent (boot "+from+") takes the deploy task")
	st.BootPurpose = agentapi.PurposeDeploy
	st.FastTrackFrom, st.BootTaskID = from, from+FastTrackSuffix
	d.setStep(StepAgent)
	return true
}

// fastTracked reports whether the deploy's agent step is a fast track's:
// the machine is up already, with no power task to wait for.
func (d *decider) fastTracked() bool {
	st := d.st()
	return st.FastTrackFrom != "" && st.Phase == PhaseDeploying && st.Step == StepAgent && st.TaskID == ""
}
