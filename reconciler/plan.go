package reconciler

import (
	"fmt"

	"github.com/kilnhq/kiln/spec"
)

// Note is one thing a change of a machine's desired state will make the
// lifecycle do (kiln diff prints them).
type Note struct {
	// Destructive marks a note that touches the machine's disks or power.
	Destructive bool
	// Phase is the phase Decide enters for it ("" when none at once).
	Phase string
	Text  string
}

// Plan predicts what changing a machine's desired state from old to cur
// makes Decide do, for a machine that had settled on old (ready or
// deployed, as old asks; nothing pending). old nil is a new machine (no
// status yet: adopted, or powered on and commissioned); cur nil a
// machine that leaves the inventory, which Decide never touches again. The predictions follow Decide's rules (TestPlanAgreesWithDecide
// holds them to it): a change under maintenance waits until it ends, a
// deployed machine is recommissioned only when released, and a release
// erases only when spec.erase asks.
func Plan(old, cur *spec.Machine) []Note { return PlanWith(old, cur, nil) }

// PlanWith is Plan for a machine whose profile (in the new inventory; nil:
// none) is known: under a rollout, a changed image or deployGeneration
// waits for the rollout's slot instead.
func PlanWith(old, cur *spec.Machine, profile *spec.Profile) []Note {
	switch {
	case cur == nil:
		return []Note{{Text: "becomes unmanaged: Kiln stops acting on it; nothing is powered off or wiped"}}
	case old == nil:
		return whenMaintenanceEnds(&cur.Spec, startsInMaintenance(&cur.Spec), planNew(&cur.Spec))
	}
	as, bs := &old.Spec, &cur.Spec
	var n []Note
	if !as.InMaintenance() && bs.InMaintenance() {
		n = append(n, Note{false, PhaseMaintenance, "enters maintenance: Kiln pauses every action on it"})
	}
	if as.InMaintenance() && !bs.InMaintenance() {
		n = append(n, Note{false, "", "leaves maintenance: Kiln resumes converging it"})
	}
	actions := planActions(as, bs)
	if r := rolloutOf(profile); r != nil && as.State == spec.StateDeployed && bs.State == spec.StateDeployed &&
		(bs.DeployGeneration > as.DeployGeneration || as.Image != bs.Image) {
		actions = planRollout(profile.Metadata.Name, r, as, bs)
	}
	return whenMaintenanceEnds(bs, n, append(actions, planAdopt(as, bs)...))
}

// whenMaintenanceEnds appends the actions to n, deferred until
// maintenance ends when bs is in maintenance.
func whenMaintenanceEnds(bs *spec.MachineSpec, n, actions []Note) []Note {
	if bs.InMaintenance() {
		for i := range actions {
			actions[i].Phase = "" // paused: nothing happens until maintenance ends
			actions[i].Text += " when maintenance ends"
		}
	}
	return append(n, actions...)
}

// startsInMaintenance notes a new machine that starts paused.
func startsInMaintenance(bs *spec.MachineSpec) []Note {
	if !bs.InMaintenance() {
		return nil
	}
	return []Note{{false, PhaseMaintenance, "starts in maintenance: Kiln does nothing to it until maintenance ends"}}
}

// planActions lists what the lifecycle does for a spec change, outside
// maintenance, in the order Decide does it.
func planActions(as, bs *spec.MachineSpec) []Note {
	var n []Note
	recommission := bs.CommissionGeneration > as.CommissionGeneration
	switch {
	case as.State == spec.StateReady && recommission:
		// From ready a raised commissionGeneration comes first, then any deploy.
		n = append(n, Note{true, PhaseCommissioning, fmt.Sprintf("recommissions (commissionGeneration %d → %d): the machine reboots into the ephemeral image", as.CommissionGeneration, bs.CommissionGeneration)})
		if bs.State == spec.StateDeployed {
			n = append(n, Note{true, "", fmt.Sprintf("then deploys image %s: the root disk will be written", bs.Image)})
		}
	case as.State == spec.StateReady && bs.State == spec.StateDeployed:
		n = append(n, Note{true, PhaseDeploying, fmt.Sprintf("deploys image %s: the root disk will be written", bs.Image)})
	case as.State == spec.StateDeployed && bs.State == spec.StateReady:
		if erases(bs.Erase) {
			n = append(n, Note{true, PhaseReleasing, fmt.Sprintf("releases the machine and erases its disks (erase: %s)", bs.Erase)})
		} else {
			n = append(n, Note{true, PhaseReleasing, "releases the machine: it is powered off; disks are kept (erase: none)"})
		}
		if recommission {
			n = append(n, Note{true, "", fmt.Sprintf("then recommissions (commissionGeneration %d → %d): the machine reboots into the ephemeral image", as.CommissionGeneration, bs.CommissionGeneration)})
		}
	case as.State == spec.StateDeployed && bs.State == spec.StateDeployed:
		if bs.DeployGeneration > as.DeployGeneration {
			n = append(n, Note{true, PhaseDeploying, fmt.Sprintf("redeploys (deployGeneration %d → %d): the root disk will be rewritten", as.DeployGeneration, bs.DeployGeneration)})
		} else if as.Image != bs.Image {
			n = append(n, Note{false, "", "image changed: applies at the next deploy; raise deployGeneration to redeploy now"})
		}
		if recommission {
			n = append(n, Note{false, "", fmt.Sprintf("commissionGeneration %d → %d: recommissions when released (state: ready), not while deployed", as.CommissionGeneration, bs.CommissionGeneration)})
		}
	}
	return n
}

// erases reports whether a release erases the disks, as releasing decides.
func erases(erase string) bool { return erase != "" && erase != "none" }
