package reconciler

import (
	"strings"
	"testing"

	"github.com/kilnhq/kiln/spec"
)

func webProfile(maxUnavailable int) *spec.Profile {
	p := &spec.Profile{Spec: spec.ProfileSpec{Rollout: &spec.Rollout{MaxUnavailable: maxUnavailable}}}
	p.Kind, p.Metadata.Name = spec.KindProfile, "web"
	return p
}

func TestDecideRollout(t *testing.T) {
	drifted := func(sp *spec.MachineSpec) { sp.Image, sp.Profile = "debian-next", "web" }
	may := &RolloutGate{May: true, Why: "slot 1 of 1"}
	wait := &RolloutGate{Why: "1 of the profile web's machines are unavailable (maxUnavailable 1); 0 ahead of it in name order"}

	// A slot: the redeploy starts.
	in := Input{Now: t0, Machine: testMachine(spec.StateDeployed, drifted), Status: at(PhaseDeployed, ""), Profile: webProfile(1), Rollout: may}
	d := Decide(in, Policy{})
	if d.Status.Phase != PhaseDeploying || len(d.Events) == 0 || d.Events[0].Reason != "RolloutRedeploy" {
		t.Fatalf("with a slot: phase %q, events %+v; want deploying by RolloutRedeploy", d.Status.Phase, d.Events)
	}

	// No slot: it waits, says why once, and does not touch the machine.
	in.Rollout = wait
	d = Decide(in, Policy{})
	c := d.Status.Condition(CondRolloutWaiting)
	if d.Status.Phase != PhaseDeployed || d.Task != nil || c == nil || c.Status != "True" || c.Message != wait.Why {
		t.Fatalf("without a slot: phase %q, task %v, condition %+v", d.Status.Phase, d.Task, c)
	}
	if len(d.Events) != 1 || d.Events[0].Reason != "RolloutWaiting" {
		t.Fatalf("without a slot: events %+v, want one RolloutWaiting", d.Events)
	}
	in.Status = d.Status
	if again := Decide(in, Policy{}); len(again.Events) != 0 || again.Task != nil {
		t.Fatalf("waiting again said more: %+v", again.Events)
	}
	// No gate given (no controller): it waits too, never redeploys.
	in.Rollout = nil
	if d := Decide(in, Policy{}); d.Status.Phase != PhaseDeployed || d.Task != nil {
		t.Fatalf("no gate: phase %q, task %v", d.Status.Phase, d.Task)
	}

	// A raised deployGeneration waits for its slot too.
	in = Input{Now: t0, Machine: testMachine(spec.StateDeployed, func(sp *spec.MachineSpec) { sp.Profile, sp.DeployGeneration = "web", 1 }),
		Status: at(PhaseDeployed, ""), Profile: webProfile(1), Rollout: wait}
	if d := Decide(in, Policy{}); d.Status.Phase != PhaseDeployed {
		t.Fatalf("deployGeneration under rollout without a slot: phase %q", d.Status.Phase)
	}
	// Release still wins over a rollout.
	in.Machine = testMachine(spec.StateReady, drifted)
	if d := Decide(in, Policy{}); d.Status.Phase != PhaseReleasing {
		t.Fatalf("release of a drifted rollout machine: phase %q", d.Status.Phase)
	}
	// Without rollout nothing changes: ImageDrift only.
	in = Input{Now: t0, Machine: testMachine(spec.StateDeployed, drifted), Status: at(PhaseDeployed, "")}
	d = Decide(in, Policy{})
	if c := d.Status.Condition(CondImageDrift); d.Status.Phase != PhaseDeployed || c == nil || c.Status != "True" || !strings.Contains(c.Message, "raise deployGeneration") {
		t.Fatalf("no rollout: phase %q, ImageDrift %+v", d.Status.Phase, c)
	}
}

func member(name, phase, image string) RolloutMember {
	st := at(phase, "")
	st.DeployedImage = image
	return RolloutMember{Name: name, Spec: &testMachine(spec.StateDeployed, func(sp *spec.MachineSpec) { sp.Image = "debian-next" }).Spec, Status: &st}
}

func TestRolloutPlan(t *testing.T) {
	off := member("b", PhaseDeployed, "debian-next")
	off.Status.Power = "off"
	maint := member("m", PhaseDeployed, "debian")
	yes := true
	maint.Spec.Maintenance = &yes
	fresh := member("n", PhaseDeploying, "") // a first deploy: not the rollout's
	for _, tc := range []struct {
		name    string
		max     int
		members []RolloutMember
		may     string // machines that may start, in order
		counts  map[string]int
		paused  string
	}{
		{"two slots in name order", 2, []RolloutMember{member("d", PhaseDeployed, "debian"), member("c", PhaseDeployed, "debian"), member("a", PhaseDeployed, "debian")},
			"a c", map[string]int{RolloutPending: 3}, ""},
		{"a redeploy in progress takes a slot", 2, []RolloutMember{member("a", PhaseDeploying, "debian"), member("c", PhaseDeployed, "debian"), member("d", PhaseDeployed, "debian")},
			"c", map[string]int{RolloutUnavailable: 1, RolloutPending: 2}, ""},
		{"an observed-off machine takes a slot", 1, []RolloutMember{off, member("c", PhaseDeployed, "debian")},
			"", map[string]int{RolloutUnavailable: 1, RolloutPending: 1}, ""},
		{"a failure pauses", 3, []RolloutMember{member("a", FailedPrefix+PhaseDeploying, "debian"), member("c", PhaseDeployed, "debian")},
			"", map[string]int{RolloutUnavailable: 1, RolloutPaused: 1}, "a"},
		{"maintenance and first deploys are not counted", 1, []RolloutMember{maint, fresh, member("c", PhaseDeployed, "debian")},
			"c", map[string]int{RolloutPending: 1}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			row, gates := RolloutPlan("web", spec.Rollout{MaxUnavailable: tc.max}, tc.members)
			var may []string
			for _, m := range []string{"a", "b", "c", "d", "m", "n"} {
				if gates[m].May {
					may = append(may, m)
				}
			}
			if got := strings.Join(may, " "); got != tc.may {
				t.Errorf("may start %q, want %q (gates %+v)", got, tc.may, gates)
			}
			for s, n := range tc.counts {
				if row.Counts[s] != n {
					t.Errorf("%s = %d, want %d (%+v)", s, row.Counts[s], n, row.Counts)
				}
			}
			if row.Paused != tc.paused {
				t.Errorf("paused by %q, want %q", row.Paused, tc.paused)
			}
		})
	}
}

func TestPlanRollout(t *testing.T) {
	old := testMachine(spec.StateDeployed, func(sp *spec.MachineSpec) { sp.Profile = "web" })
	for name, tc := range map[string]struct {
		cur  *spec.Machine
		want string
	}{
		"image": {testMachine(spec.StateDeployed, func(sp *spec.MachineSpec) { sp.Profile, sp.Image = "web", "debian-next" }),
			"!redeployed by the rollout of profile web (image debian → debian-next; at most 2 of its machines at a time, in name order): the root disk will be rewritten"},
		"generation": {testMachine(spec.StateDeployed, func(sp *spec.MachineSpec) { sp.Profile, sp.DeployGeneration = "web", 3 }),
			"!redeployed by the rollout of profile web (deployGeneration 0 → 3; at most 2 of its machines at a time, in name order): the root disk will be rewritten"},
		"release": {testMachine(spec.StateReady, func(sp *spec.MachineSpec) { sp.Profile, sp.Image = "web", "debian-next" }),
			"!releases the machine: it is powered off; disks are kept (erase: none)"},
	} {
		t.Run(name, func(t *testing.T) {
			notes := PlanWith(old, tc.cur, webProfile(2))
			if len(notes) != 1 || (map[bool]string{true: "!", false: " "}[notes[0].Destructive]+notes[0].Text) != tc.want {
				t.Fatalf("notes %+v, want %q", notes, tc.want)
			}
			// Decide, given no slot, agrees: nothing starts at once
			// unless Plan names a phase.
			out := Decide(Input{Now: t0, Machine: tc.cur, Status: settled(&old.Spec), Profile: webProfile(2)}, Policy{})
			entered := ""
			for _, ev := range out.Events {
				if ev.From != ev.To {
					entered = ev.To
					break
				}
			}
			if entered != notes[0].Phase {
				t.Fatalf("Decide entered %q, Plan predicts %q", entered, notes[0].Phase)
			}
		})
	}
}
