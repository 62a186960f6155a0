package reconciler

import (
	"fmt"
	"slices"
	"strings"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/spec"
	"github.com/kilnhq/kiln/spec/agentapi"
	"github.com/prometheus/client_golang/prometheus"
)

// Rolling redeploys (docs/lifecycle.md, decision 13 amended): a Profile
// with rollout redeploys its deployed machines whose image or
// deployGeneration changed, at most maxUnavailable of them not confirmed
// deployed at once, in name order, pausing while one has failed. Decide
// stays pure: the controller works out, from the statuses it holds,
// whether a machine may start now (RolloutGate), and Decide acts on it.

// RolloutGate is the controller's answer to "may this machine start its
// redeploy now?".
type RolloutGate struct {
	May bool
	Why string // why not (or, when it may, which slot it takes)
}

// RolloutState is where one machine stands in its profile's rollout.
const (
	RolloutCurrent     = "current"     // deployed with the profile's image and generation
	RolloutPending     = "pending"     // drifted, waiting for a slot
	RolloutUnavailable = "unavailable" // being redeployed, failed, or observed off
	RolloutPaused      = "paused"      // drifted, held because a redeploy failed
)

// rolloutOf is the rollout of the machine's profile, or nil.
func rolloutOf(p *spec.Profile) *spec.Rollout {
	if p == nil {
		return nil
	}
	return p.Spec.Rollout
}

// redeployWanted reports whether a deployed machine's spec asks for
// another image or a higher deploy generation than it has.
func redeployWanted(sp *spec.MachineSpec, st *inventory.MachineStatus) bool {
	return sp.Image != st.DeployedImage || sp.DeployGeneration > st.DeployedGeneration
}

// rollout handles a deployed machine of a profile with rollout; it
// reports whether it decided the step (handled) and whether the phase
// changed.
func (d *decider) rollout() (handled, changed bool) {
	st, sp := d.st(), d.spec()
	r := rolloutOf(d.in.Profile)
	if r == nil || sp.State != spec.StateDeployed || !redeployWanted(sp, st) {
		if st.Condition(CondRolloutWaiting) != nil {
			st.SetCondition(CondRolloutWaiting, "False", "", "", d.in.Now)
		}
		return false, false
	}
	g := d.in.Rollout
	if g == nil {
		g = &RolloutGate{Why: "no rollout slot given yet"}
	}
	if !g.May {
		if c := st.Condition(CondRolloutWaiting); c == nil || c.Status != "True" || c.Message != g.Why {
			if c == nil || c.Status != "True" {
				d.event("Normal", "RolloutWaiting", "redeploy of "+sp.Image+" waits: "+g.Why)
			}
			st.SetCondition(CondRolloutWaiting, "True", "Rollout", g.Why, d.in.Now)
		}
		st.BootPurpose = agentapi.PurposeLocal
		return true, false
	}
	st.SetCondition(CondRolloutWaiting, "False", "", "", d.in.Now)
	what := "image " + sp.Image
	if sp.Image == st.DeployedImage {
		what = fmt.Sprintf("deployGeneration %d", sp.DeployGeneration)
	}
	d.enter(PhaseDeploying, "RolloutRedeploy", fmt.Sprintf("rollout of profile %s (maxUnavailable %d): redeploying with %s (%s)",
		d.in.Profile.Metadata.Name, r.MaxUnavailable, what, g.Why))
	return true, true
}

// redeployHint says how a drifted deployed machine gets its new image.
func (d *decider) redeployHint() string {
	if r := rolloutOf(d.in.Profile); r != nil {
		return fmt.Sprintf("the rollout of profile %s redeploys it (maxUnavailable %d)", d.in.Profile.Metadata.Name, r.MaxUnavailable)
	}
	return "raise deployGeneration to redeploy"
}

// planRollout is what kiln diff says of a deployed machine that a
// profile's rollout will redeploy.
func planRollout(profile string, r *spec.Rollout, as, bs *spec.MachineSpec) []Note {
	what := fmt.Sprintf("image %s → %s", as.Image, bs.Image)
	if as.Image == bs.Image {
		what = fmt.Sprintf("deployGeneration %d → %d", as.DeployGeneration, bs.DeployGeneration)
	}
	n := []Note{{true, "", fmt.Sprintf("redeployed by the rollout of profile %s (%s; at most %d of its machines at a time, in name order): the root disk will be rewritten", profile, what, r.MaxUnavailable)}}
	if bs.CommissionGeneration > as.CommissionGeneration {
		n = append(n, Note{false, "", fmt.Sprintf("commissionGeneration %d → %d: recommissions when released (state: ready), not while deployed", as.CommissionGeneration, bs.CommissionGeneration)})
	}
	return n
}

// RolloutMember is one machine as the rollout arithmetic sees it.
type RolloutMember struct {
	Name   string
	Spec   *spec.MachineSpec
	Status *inventory.MachineStatus // nil: no status yet
}

// RolloutRow summarises one profile's rollout (kiln get rollouts and
// kiln_rollout_machines).
type RolloutRow struct {
	Profile        string
	MaxUnavailable int
	Counts         map[string]int // by RolloutState
	Paused         string         // the failed machine that pauses it
}

// rolloutState classifies one member; "" when it is not part of the
// rollout (not meant to be deployed, in maintenance, or never deployed).
func rolloutState(m RolloutMember) string {
	sp, st := m.Spec, m.Status
	if sp.State != spec.StateDeployed || sp.InMaintenance() || st == nil || st.DeployedImage == "" {
		return ""
	}
	switch {
	case st.Phase == PhaseDeployed && st.Power == "off":
		return RolloutUnavailable
	case st.Phase == PhaseDeployed && redeployWanted(sp, st):
		return RolloutPending
	case st.Phase == PhaseDeployed:
		return RolloutCurrent
	}
	return RolloutUnavailable
}

// RolloutPlan works out a profile's rollout from its members: the
// summary row, and the machines that may start a redeploy now (in name
// order, as many as there are free slots, none while one has failed).
func RolloutPlan(profile string, r spec.Rollout, members []RolloutMember) (RolloutRow, map[string]RolloutGate) {
	row := RolloutRow{Profile: profile, MaxUnavailable: r.MaxUnavailable, Counts: map[string]int{}}
	members = slices.Clone(members)
	slices.SortFunc(members, func(a, b RolloutMember) int { return strings.Compare(a.Name, b.Name) })
	var pending []string
	for _, m := range members {
		s := rolloutState(m)
		if s == "" {
			continue
		}
		if m.Status.Phase == FailedPrefix+PhaseDeploying && row.Paused == "" {
			row.Paused = m.Name
		}
		if s == RolloutPending {
			pending = append(pending, m.Name)
		}
		row.Counts[s]++
	}
	gates := make(map[string]RolloutGate, len(pending))
	free := r.MaxUnavailable - row.Counts[RolloutUnavailable]
	for i, name := range pending {
		switch {
		case row.Paused != "":
			gates[name] = RolloutGate{Why: fmt.Sprintf("the rollout of profile %s is paused: %s failed to deploy (kiln retry machine %s once it is fixed)", profile, row.Paused, row.Paused)}
		case i < free:
			gates[name] = RolloutGate{May: true, Why: fmt.Sprintf("slot %d of %d", row.Counts[RolloutUnavailable]+i+1, r.MaxUnavailable)}
		default:
			gates[name] = RolloutGate{Why: fmt.Sprintf("%d of the profile %s's machines are unavailable (maxUnavailable %d); %d ahead of it in name order",
				row.Counts[RolloutUnavailable], profile, r.MaxUnavailable, i)}
		}
	}
	if row.Paused != "" {
		row.Counts[RolloutPaused], row.Counts[RolloutPending] = row.Counts[RolloutPending], 0
	}
	return row, gates
}

// rolloutGate is the gate of one machine, worked out under c.mu from the
// cached statuses. Two workers deciding at once cannot both take the last
// slot: slots go in name order, so a machine behind one that was just
// given a slot waits until that one's status shows it unavailable (the
// cache is updated before the worker lets go of it).
func (c *controller) rolloutGate(m *spec.Machine) *RolloutGate {
	p := c.profiles[m.Spec.Profile]
	r := rolloutOf(p)
	if r == nil {
		return nil
	}
	_, gates := RolloutPlan(p.Metadata.Name, *r, c.rolloutMembers(p.Metadata.Name))
	if g, ok := gates[m.Metadata.Name]; ok {
		return &g
	}
	return nil
}

// rolloutMembers lists a profile's machines with their cached statuses
// (c.mu held).
func (c *controller) rolloutMembers(profile string) []RolloutMember {
	var out []RolloutMember
	for name, m := range c.desired {
		if m.Spec.Profile != profile {
			continue
		}
		mem := RolloutMember{Name: name, Spec: &m.Spec}
		if e, ok := c.status[name]; ok {
			st := e.st
			mem.Status = &st
		}
		out = append(out, mem)
	}
	return out
}

// kickRollout queues the other machines of a rollout profile when one of
// them changed phase or power: a slot may have freed (or been taken).
func (c *controller) kickRollout(name string, was, now inventory.MachineStatus) {
	if was.Phase == now.Phase && was.Power == now.Power {
		return
	}
	c.mu.Lock()
	var others []string
	if m := c.desired[name]; m != nil && rolloutOf(c.profiles[m.Spec.Profile]) != nil {
		for other, om := range c.desired {
			if other != name && om.Spec.Profile == m.Spec.Profile {
				others = append(others, other)
			}
		}
	}
	c.mu.Unlock()
	for _, o := range others {
		c.q.Add(o)
	}
}

// rollouts summarises every profile with rollout (c.mu not held).
func (c *controller) rollouts() []RolloutRow {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []RolloutRow
	for name, p := range c.profiles {
		if r := rolloutOf(p); r != nil {
			row, _ := RolloutPlan(name, *r, c.rolloutMembers(name))
			out = append(out, row)
		}
	}
	return out
}

// RolloutMetricHelp is kiln_rollout_machines's help text.
const RolloutMetricHelp = "Machines of each profile with rollout, by where they stand: current, pending (waiting for a slot), paused (waiting while a redeploy failed), unavailable (being redeployed, failed or observed off) (reported by the region leader)."

var rolloutDesc = prometheus.NewDesc("kiln_rollout_machines", RolloutMetricHelp, []string{"profile", "state"}, nil)

// rolloutCollector reports kiln_rollout_machines from the leader's caches
// at scrape time; a follower reports nothing.
type rolloutCollector struct{ r *Region }

func (c rolloutCollector) Describe(ch chan<- *prometheus.Desc) { ch <- rolloutDesc }

func (c rolloutCollector) Collect(ch chan<- prometheus.Metric) {
	cur := c.r.current()
	if cur == nil {
		return
	}
	for _, row := range cur.rollouts() {
		for _, s := range []string{RolloutCurrent, RolloutPending, RolloutPaused, RolloutUnavailable} {
			ch <- prometheus.MustNewConstMetric(rolloutDesc, prometheus.GaugeValue, float64(row.Counts[s]), row.Profile, s)
		}
	}
}
