package main

import (
	"strings"
	"testing"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/spec"
)

func TestRolloutTable(t *testing.T) {
	inv := spec.NewInventory()
	web := &spec.Profile{Spec: spec.ProfileSpec{Rollout: &spec.Rollout{MaxUnavailable: 1}}}
	web.Metadata.Name = "web"
	plain := &spec.Profile{}
	plain.Metadata.Name = "plain"
	inv.Profiles["web"], inv.Profiles["plain"] = web, plain
	statuses := map[string]inventory.MachineStatus{}
	for name, st := range map[string]inventory.MachineStatus{
		"w1": {Phase: "deployed", DeployedImage: "new"},
		"w2": {Phase: "failed-deploying", DeployedImage: "old"},
		"w3": {Phase: "deployed", DeployedImage: "old"},
		"p1": {Phase: "deployed", DeployedImage: "old"},
	} {
		m := &spec.Machine{Spec: spec.MachineSpec{State: spec.StateDeployed, Image: "new", Profile: "web"}}
		if name == "p1" {
			m.Spec.Profile = "plain"
		}
		m.Metadata.Name = name
		inv.Machines[name] = m
		statuses[name] = st
	}
	tb := rolloutTable(inv, statuses, "")
	got := strings.Join(tb.header, " ") + "\n"
	for _, r := range tb.rows {
		got += strings.Join(r, " ") + "\n"
	}
	want := "PROFILE MAX-UNAVAILABLE MACHINES CURRENT UNAVAILABLE PENDING STATE\n" +
		"web 1 3 1 1 1 paused: w2 failed (kiln retry machine w2)\n"
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	if tb := rolloutTable(inv, statuses, "other"); len(tb.rows) != 0 {
		t.Fatalf("a name filter kept %v", tb.rows)
	}
}
