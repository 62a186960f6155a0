package main

import (
	"context"
	"fmt"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/reconciler"
	"github.com/kilnhq/kiln/spec"
)

// readRollouts lists every profile with rollout and where its machines
// stand, worked out as the region leader does (reconciler.RolloutPlan).
func (g *getter) readRollouts(ctx context.Context) (*table, int64, error) {
	snap, err := g.r.Snapshot(ctx, spec.KindProfile, spec.KindMachine)
	if err != nil {
		return nil, 0, err
	}
	statuses, err := g.r.MachineStatusesOf(ctx, spec.SortedNames(snap.Inventory.Machines))
	if err != nil {
		return nil, 0, err
	}
	return rolloutTable(snap.Inventory, statuses, g.name), snap.Revision, nil
}

// rolloutTable is kiln get rollouts' table; name keeps one profile.
func rolloutTable(inv *spec.Inventory, statuses map[string]inventory.MachineStatus, name string) *table {
	t := &table{header: []string{"PROFILE", "MAX-UNAVAILABLE", "MACHINES", "CURRENT", "UNAVAILABLE", "PENDING", "STATE"}, items: map[string]any{}}
	for _, pn := range spec.SortedNames(inv.Profiles) {
		p := inv.Profiles[pn]
		if p.Spec.Rollout == nil || (name != "" && pn != name) {
			continue
		}
		var members []reconciler.RolloutMember
		for _, mn := range spec.SortedNames(inv.Machines) {
			m := inv.Machines[mn]
			if m.Spec.Profile != pn {
				continue
			}
			mem := reconciler.RolloutMember{Name: mn, Spec: &m.Spec}
			if st, ok := statuses[mn]; ok {
				mem.Status = &st
			}
			members = append(members, mem)
		}
		row, _ := reconciler.RolloutPlan(pn, *p.Spec.Rollout, members)
		c := row.Counts
		total := c[reconciler.RolloutCurrent] + c[reconciler.RolloutUnavailable] + c[reconciler.RolloutPending] + c[reconciler.RolloutPaused]
		state := "done"
		switch {
		case row.Paused != "":
			state = "paused: " + row.Paused + " failed (kiln retry machine " + row.Paused + ")"
		case c[reconciler.RolloutPending]+c[reconciler.RolloutUnavailable] > 0:
			state = "rolling"
		}
		t.rows = append(t.rows, []string{pn, fmt.Sprint(row.MaxUnavailable), fmt.Sprint(total), fmt.Sprint(c[reconciler.RolloutCurrent]),
			fmt.Sprint(c[reconciler.RolloutUnavailable]), fmt.Sprint(c[reconciler.RolloutPending] + c[reconciler.RolloutPaused]), state})
		t.items[pn] = row
	}
	return t
}
