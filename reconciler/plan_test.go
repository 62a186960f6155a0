package reconciler

import (
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/spec"
)

// planCases are spec changes with what Plan must say about them, each
// note as "!" (destructive) or " " followed by its text.
var planCases = map[string]struct {
	old, cur *spec.Machine
	want     []string
}{
	"new ready":    {nil, testMachine(spec.StateReady), []string{"!will be powered on and commissioned"}},
	"new deployed": {nil, testMachine(spec.StateDeployed), []string{"!will be powered on and commissioned", "!then deploys image debian: its root disk will be written"}},
	"new adopted": {nil, testMachine(spec.StateDeployed, adoptSpec),
		[]string{" adopted as deployed with image debian: no power action, no boot, disk untouched; Kiln watches its power"}},
	"new adopt with state ready": {nil, testMachine(spec.StateReady, adoptSpec), []string{"!will be powered on and commissioned"}},
	"new adopted in maintenance": {nil, testMachine(spec.StateDeployed, adoptSpec, maintenance),
		[]string{" starts in maintenance: Kiln does nothing to it until maintenance ends", " adopted as deployed with image debian: no power action, no boot, disk untouched; Kiln watches its power when maintenance ends"}},
	"new in maintenance": {nil, testMachine(spec.StateReady, maintenance),
		[]string{" starts in maintenance: Kiln does nothing to it until maintenance ends", "!will be powered on and commissioned when maintenance ends"}},
	"adopt set later is ignored": {testMachine(spec.StateDeployed), testMachine(spec.StateDeployed, adoptSpec),
		[]string{" adopt: ignored: the machine is already known to Kiln (adoption applies only on first sight)"}},
	"adopted released": {testMachine(spec.StateDeployed, adoptSpec), testMachine(spec.StateReady),
		[]string{"!releases the machine: it is powered off; disks are kept (erase: none)", "!then commissions it if it was adopted and never commissioned: the machine reboots into the ephemeral image"}},
	"removed":   {testMachine(spec.StateDeployed), nil, []string{" becomes unmanaged: Kiln stops acting on it; nothing is powered off or wiped"}},
	"unchanged": {testMachine(spec.StateReady), testMachine(spec.StateReady), nil},
	"deploy":    {testMachine(spec.StateReady), testMachine(spec.StateDeployed), []string{"!deploys image debian: the root disk will be written"}},
	"release keeping disks": {testMachine(spec.StateDeployed), testMachine(spec.StateReady),
		[]string{"!releases the machine: it is powered off; disks are kept (erase: none)"}},
	"release with erase": {testMachine(spec.StateDeployed), testMachine(spec.StateReady, func(s *spec.MachineSpec) { s.Erase = "quick" }),
		[]string{"!releases the machine and erases its disks (erase: quick)"}},
	"release with erase unset": {testMachine(spec.StateDeployed), testMachine(spec.StateReady, func(s *spec.MachineSpec) { s.Erase = "" }),
		[]string{"!releases the machine: it is powered off; disks are kept (erase: none)"}},
	"redeploy": {testMachine(spec.StateDeployed), testMachine(spec.StateDeployed, func(s *spec.MachineSpec) { s.DeployGeneration = 1; s.Image = "ubuntu" }),
		[]string{"!redeploys (deployGeneration 0 → 1): the root disk will be rewritten"}},
	"image changed": {testMachine(spec.StateDeployed), testMachine(spec.StateDeployed, func(s *spec.MachineSpec) { s.Image = "ubuntu" }),
		[]string{" image changed: applies at the next deploy; raise deployGeneration to redeploy now"}},
	"recommission ready": {testMachine(spec.StateReady), testMachine(spec.StateReady, func(s *spec.MachineSpec) { s.CommissionGeneration = 2 }),
		[]string{"!recommissions (commissionGeneration 0 → 2): the machine reboots into the ephemeral image"}},
	"recommission then deploy": {testMachine(spec.StateReady), testMachine(spec.StateDeployed, func(s *spec.MachineSpec) { s.CommissionGeneration = 1 }),
		[]string{"!recommissions (commissionGeneration 0 → 1): the machine reboots into the ephemeral image", "!then deploys image debian: the root disk will be written"}},
	"recommission while deployed waits": {testMachine(spec.StateDeployed), testMachine(spec.StateDeployed, func(s *spec.MachineSpec) { s.CommissionGeneration = 1 }),
		[]string{" commissionGeneration 0 → 1: recommissions when released (state: ready), not while deployed"}},
	"release then recommission": {testMachine(spec.StateDeployed), testMachine(spec.StateReady, func(s *spec.MachineSpec) { s.CommissionGeneration = 1 }),
		[]string{"!releases the machine: it is powered off; disks are kept (erase: none)", "!then recommissions (commissionGeneration 0 → 1): the machine reboots into the ephemeral image"}},
	"enter maintenance": {testMachine(spec.StateReady), testMachine(spec.StateReady, maintenance),
		[]string{" enters maintenance: Kiln pauses every action on it"}},
	"deploy under maintenance waits": {testMachine(spec.StateReady), testMachine(spec.StateDeployed, maintenance),
		[]string{" enters maintenance: Kiln pauses every action on it", "!deploys image debian: the root disk will be written when maintenance ends"}},
	"leave maintenance and deploy": {testMachine(spec.StateReady, maintenance), testMachine(spec.StateDeployed),
		[]string{" leaves maintenance: Kiln resumes converging it", "!deploys image debian: the root disk will be written"}},
}

func maintenance(s *spec.MachineSpec) { on := true; s.Maintenance = &on }

func TestPlan(t *testing.T) {
	for name, tc := range planCases {
		t.Run(name, func(t *testing.T) {
			var got []string
			for _, n := range Plan(tc.old, tc.cur) {
				mark := " "
				if n.Destructive {
					mark = "!"
				}
				got = append(got, mark+n.Text)
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

// TestPlanAgreesWithDecide runs Decide on a machine settled on the old
// spec, given the new one: the first phase it enters is the first phase
// Plan names, and it enters none when Plan names none.
func TestPlanAgreesWithDecide(t *testing.T) {
	for name, tc := range planCases {
		if tc.cur == nil {
			continue // a removed machine is never decided
		}
		t.Run(name, func(t *testing.T) {
			want := ""
			for _, n := range Plan(tc.old, tc.cur) {
				if n.Phase != "" {
					want = n.Phase
					break
				}
			}
			var st inventory.MachineStatus // a new machine: no status yet
			if tc.old != nil {
				st = settled(&tc.old.Spec)
			}
			out := Decide(Input{Now: time.Unix(1e9, 0), Machine: tc.cur, Status: st}, Policy{})
			got := ""
			for _, ev := range out.Events {
				if ev.From != ev.To {
					got = ev.To
					break
				}
			}
			if got != want {
				t.Errorf("Decide entered %q first, Plan predicts %q (events %+v)", got, want, out.Events)
			}
		})
	}
}

// settled is the status of a machine that converged on sp.
func settled(sp *spec.MachineSpec) inventory.MachineStatus {
	st := inventory.MachineStatus{Phase: PhaseReady, CommissionedGeneration: sp.CommissionGeneration}
	if sp.State == spec.StateDeployed {
		st.Phase, st.DeployedGeneration, st.DeployedImage = PhaseDeployed, sp.DeployGeneration, sp.Image
	}
	if sp.InMaintenance() {
		st.Phase, st.Paused = PhaseMaintenance, st.Phase
	}
	return st
}
