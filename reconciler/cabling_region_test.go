package reconciler_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/reconciler"
	"github.com/kilnhq/kiln/spec"
	"github.com/kilnhq/kiln/spec/agentapi"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// withPort is lab's inventory with rack r1 declaring, for machine m's
// eno1, port on switch sw, and the rack's cabling policy.
func withPort(t *testing.T, machines map[string]string, policy, m, sw, port string) *spec.Inventory {
	inv := lab(t, machines)
	r := inv.Racks["r1"]
	r.Spec.Cabling = policy
	r.Spec.Switches = []spec.Switch{{Name: sw, Ports: []spec.SwitchPort{{Name: port, Machine: m, Interface: "eno1"}}}}
	return inv
}

// A rack with cabling: block holds the deployment of a machine whose
// commissioning saw another switch port than declared; fixing the
// declaration (a changed rack queues its machines) lets it deploy.
func TestCablingBlockHoldsUntilTheRackIsFixed(t *testing.T) {
	e := newEnv(t)
	facts, _ := json.Marshal(agentapi.Facts{LLDP: []agentapi.Neighbor{{Interface: "enp1s0", MAC: "02:00:00:00:00:01",
		ChassisID: "0c:00:00:00:00:0b", ChassisIDType: "mac", PortID: "Ethernet7", PortIDType: "interface-name", SystemName: "tor-b"}}})
	ready := inventory.MachineStatus{Phase: "ready", Rack: "r1", PhaseStartedAt: time.Now().UTC(), Facts: facts}
	b, _ := json.Marshal(ready)
	if _, err := e.cli.Put(e.ctx, e.store.Keys().MachineStatus("m"), string(b)); err != nil {
		t.Fatal(err)
	}
	machines := map[string]string{"m": "state: deployed"}
	e.apply(withPort(t, machines, "block", "m", "tor-a", "Ethernet1/12"), "r1")
	_, reg := e.region("region-1", reconciler.Config{})

	st := e.waitStatus("m", time.Minute, "held by the cabling", func(st inventory.MachineStatus) bool { return st.Step == reconciler.StepCablingHold })
	c := st.Condition(reconciler.CondCablingMismatch)
	if c == nil || c.Status != "True" || !strings.Contains(c.Message, "eno1 (02:00:00:00:00:01) is cabled to tor-b Ethernet7, the rack declares tor-a Ethernet1/12") {
		t.Fatalf("condition %+v", c)
	}
	if !hasEvent(e.events("m"), "CablingMismatch", "") || !hasEvent(e.events("m"), "DeployHeld", "") {
		t.Fatalf("events %+v", e.events("m"))
	}
	if n := e.sim.count("m", "netboot"); n != 0 {
		t.Fatalf("a held machine was network-booted %d times", n)
	}
	wantMismatches(t, reg, 1)

	e.apply(withPort(t, machines, "block", "m", "tor-b", "Ethernet7"), "r2")
	st = e.waitPhase("m", "deployed", time.Minute)
	if c := st.Condition(reconciler.CondCablingMismatch); c == nil || c.Status != "False" || !hasEvent(e.events("m"), "CablingCleared", "") {
		t.Fatalf("after the fix: condition %+v, events %+v", c, e.events("m"))
	}
	wantMismatches(t, reg, 0)
}

// wantMismatches compares kiln_cabling_mismatch_machines with n for rack r1.
func wantMismatches(t *testing.T, reg *prometheus.Registry, n int) {
	t.Helper()
	err := testutil.GatherAndCompare(reg, strings.NewReader(fmt.Sprintf(`
# HELP kiln_cabling_mismatch_machines Machines whose LLDP neighbours contradict their rack's declared switch ports (CablingMismatch True), by rack (reported by the region leader).
# TYPE kiln_cabling_mismatch_machines gauge
kiln_cabling_mismatch_machines{rack="r1"} %d
`, n)), "kiln_cabling_mismatch_machines")
	if err != nil {
		t.Fatal(err)
	}
}
