package reconciler

import (
	"fmt"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/spec"
	"github.com/kilnhq/kiln/spec/agentapi"
)

// Adoption takes over a machine that already runs an OS: a Machine with
// adopt: true, state: deployed and an image, seen for the first time, is
// recorded as deployed with that image. Nothing is powered, booted or
// written. It was never commissioned, so its hardware facts are unknown;
// released (state: ready), it is commissioned once it is ready.

// adopts reports whether a spec asks for adoption.
func adopts(sp *spec.MachineSpec) bool {
	return sp.Adopt && sp.State == spec.StateDeployed && sp.Image != ""
}

// firstSight reports whether the machine had no lifecycle before this
// decision: no status, or a maintenance entered before it had one.
// Adoption applies only then; a machine with a status ignores adopt.
func (d *decider) firstSight() bool {
	in := d.in.Status
	return in.Phase == PhaseNew || (in.Phase == PhaseMaintenance && in.Paused == PhaseNew)
}

// adopt records the machine as deployed without any power action or
// boot. It reports whether it adopted the machine.
func (d *decider) adopt() bool {
	st, sp, now := d.st(), d.spec(), d.in.Now
	if !d.firstSight() || !adopts(sp) {
		return false
	}
	st.DeployedGeneration, st.DeployedImage, st.DeployedAt = sp.DeployGeneration, sp.Image, now
	st.BootPurpose = agentapi.PurposeLocal // a reboot boots its own disk
	st.BootTaskID, st.IgnoredReport = "", ""
	st.SetCondition(CondAdopted, "True", "Adopted", "adopted running image "+sp.Image+": not powered, booted or written by Kiln", now)
	st.SetCondition(CondDeployed, "True", "Adopted", "adopted as running "+sp.Image+" (declared, not checked)", now)
	st.SetCondition(CondCommissioned, "False", "Adopted", "never commissioned: hardware facts unknown; releasing it (state: ready) commissions it", now)
	d.transition(PhaseDeployed, "Adopted", fmt.Sprintf("adopted as deployed with image %s: no power action, no boot, disk untouched; "+
		"hardware facts unknown (never commissioned: a release commissions it)", sp.Image))
	return true
}

// AdoptedUncommissioned reports whether the machine was adopted and has
// not been commissioned since: its hardware facts are unknown.
func AdoptedUncommissioned(st *inventory.MachineStatus) bool {
	c := st.Condition(CondAdopted)
	return c != nil && c.Status == "True" && st.CommissionedAt.IsZero()
}

// commissionAdopted commissions an adopted machine once it is ready
// (released); it reports whether it did.
func (d *decider) commissionAdopted() bool {
	if !AdoptedUncommissioned(d.st()) {
		return false
	}
	d.enter(PhaseCommissioning, "Commissioning", "adopted machine released: commissioning its hardware (never commissioned)")
	return true
}

// planNew is what Decide does with a machine Kiln has never seen.
func planNew(sp *spec.MachineSpec) []Note {
	if adopts(sp) {
		return []Note{{false, PhaseDeployed, fmt.Sprintf("adopted as deployed with image %s: no power action, no boot, disk untouched; Kiln watches its power", sp.Image)}}
	}
	n := []Note{{true, PhaseCommissioning, "will be powered on and commissioned"}}
	if sp.State == spec.StateDeployed {
		n = append(n, Note{true, "", fmt.Sprintf("then deploys image %s: its root disk will be written", sp.Image)})
	}
	return n
}

// planAdopt notes what adopt does on a machine already applied, which
// Decide ignores, and the commissioning that follows the release of an
// adopted machine.
func planAdopt(as, bs *spec.MachineSpec) []Note {
	var n []Note
	if bs.Adopt && !as.Adopt {
		n = append(n, Note{false, "", "adopt: ignored: the machine is already known to Kiln (adoption applies only on first sight)"})
	}
	if as.Adopt && as.State == spec.StateDeployed && bs.State == spec.StateReady {
		n = append(n, Note{true, "", "then commissions it if it was adopted and never commissioned: the machine reboots into the ephemeral image"})
	}
	return n
}
