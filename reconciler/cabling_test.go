package reconciler

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/spec"
	"github.com/kilnhq/kiln/spec/agentapi"
)

const (
	mac0 = "52:54:00:00:00:01"
	mac1 = "52:54:00:00:00:02"
	torA = "0c:00:00:00:00:0a"
	torB = "0c:00:00:00:00:0b"
)

// cabledMachine is testMachine with interfaces eth0 and eth1.
func cabledMachine(state string) *spec.Machine {
	return testMachine(state, func(s *spec.MachineSpec) {
		s.Interfaces = []spec.Interface{{Name: "eth0", MAC: mac0}, {Name: "eth1", MAC: mac1}}
	})
}

// cablingRack is rack r1 with a policy and switches.
func cablingRack(policy string, sws ...spec.Switch) *spec.Rack {
	r := &spec.Rack{Spec: spec.RackSpec{Cabling: policy, Switches: sws}}
	r.Kind, r.Metadata.Name = spec.KindRack, "r1"
	return r
}

// tor is a switch with m1's interfaces cabled to ports "port:iface".
func tor(name, chassis string, ports ...string) spec.Switch {
	sw := spec.Switch{Name: name, ChassisID: chassis}
	for _, p := range ports {
		i := strings.LastIndex(p, ":")
		port, iface := p[:i], p[i+1:]
		sw.Ports = append(sw.Ports, spec.SwitchPort{Name: port, Machine: "m1", Interface: iface})
	}
	return sw
}

// seen is an LLDP neighbour on our MAC with an interface-name port ID.
func seen(mac, sysName, chassis, port string) agentapi.Neighbor {
	return agentapi.Neighbor{Interface: "enp1s0", MAC: mac, ChassisID: chassis, ChassisIDType: "mac", PortID: port, PortIDType: "interface-name", SystemName: sysName}
}

func TestCheckCabling(t *testing.T) {
	descr := func(n agentapi.Neighbor, subtype, desc string) agentapi.Neighbor {
		n.PortIDType, n.PortID, n.PortDescription = subtype, "0c:00:00:00:07:07", desc
		return n
	}
	cases := []struct {
		name  string
		sws   []spec.Switch
		lldp  []agentapi.Neighbor
		want  []string // result per declared port, in order
		words []string // in the String of the first check
	}{
		{name: "chassis-by-id-ok", sws: []spec.Switch{tor("tor-a", torA, "Ethernet1/12:eth0")}, lldp: []agentapi.Neighbor{seen(mac0, "other-name", torA, "Ethernet1/12")}, want: []string{CablingOK}},
		{name: "chassis-id-any-notation", sws: []spec.Switch{tor("tor-a", "0C-00-00-00-00-0A", "Ethernet1/12:eth0")}, lldp: []agentapi.Neighbor{seen(mac0, "", torA, "Ethernet1/12")}, want: []string{CablingOK}},
		{name: "chassis-by-id-mismatch", sws: []spec.Switch{tor("tor-a", torA, "Ethernet1/12:eth0")}, lldp: []agentapi.Neighbor{seen(mac0, "tor-a", torB, "Ethernet1/12")}, want: []string{CablingMismatch},
			words: []string{"eth0 (" + mac0 + ") is cabled to tor-a (chassis " + torB + ") Ethernet1/12, the rack declares tor-a Ethernet1/12"}},
		{name: "chassis-by-name-ok", sws: []spec.Switch{tor("tor-a", "", "Ethernet1/12:eth0")}, lldp: []agentapi.Neighbor{seen(mac0, "TOR-A", torB, "Ethernet1/12")}, want: []string{CablingOK}},
		{name: "chassis-by-name-mismatch", sws: []spec.Switch{tor("tor-a", "", "Ethernet1/12:eth0")}, lldp: []agentapi.Neighbor{seen(mac0, "tor-b", torB, "Ethernet7")}, want: []string{CablingMismatch},
			words: []string{"eth0 (" + mac0 + ") is cabled to tor-b Ethernet7, the rack declares tor-a Ethernet1/12"}},
		{name: "chassis-by-name-no-system-name", sws: []spec.Switch{tor("tor-a", "", "Ethernet1/12:eth0")}, lldp: []agentapi.Neighbor{seen(mac0, "", torA, "Ethernet1/12")}, want: []string{CablingMismatch}, words: []string{"chassis " + torA}},
		{name: "port-mismatch", sws: []spec.Switch{tor("tor-a", torA, "Ethernet1/12:eth0")}, lldp: []agentapi.Neighbor{seen(mac0, "tor-a", torA, "Ethernet1/13")}, want: []string{CablingMismatch}, words: []string{"Ethernet1/13", "declares tor-a Ethernet1/12"}},
		{name: "port-subtype-local", sws: []spec.Switch{tor("tor-a", torA, "7:eth0")}, lldp: []agentapi.Neighbor{func() agentapi.Neighbor { n := seen(mac0, "", torA, "7"); n.PortIDType = "local"; return n }()}, want: []string{CablingOK}},
		{name: "port-subtype-mac-uses-description", sws: []spec.Switch{tor("tor-a", torA, "Ethernet7:eth0")}, lldp: []agentapi.Neighbor{descr(seen(mac0, "", torA, ""), "mac", "Ethernet7")}, want: []string{CablingOK}},
		{name: "port-subtype-mac-id-not-compared", sws: []spec.Switch{tor("tor-a", torA, "0c:00:00:00:07:07:eth0")}, lldp: []agentapi.Neighbor{descr(seen(mac0, "", torA, ""), "mac", "uplink")}, want: []string{CablingMismatch}},
		{name: "port-subtype-alias-uses-description", sws: []spec.Switch{tor("tor-a", torA, "Ethernet7:eth0")}, lldp: []agentapi.Neighbor{descr(seen(mac0, "", torA, ""), "interface-alias", "Ethernet8")}, want: []string{CablingMismatch}, words: []string{"Ethernet8"}},
		{name: "no-neighbour", sws: []spec.Switch{tor("tor-a", torA, "Ethernet1/12:eth0")}, lldp: []agentapi.Neighbor{seen(mac1, "tor-a", torA, "Ethernet1/12")}, want: []string{CablingNoNeighbour}, words: []string{"no LLDP neighbour seen on eth0"}},
		{name: "neighbour-matched-by-mac-not-name", sws: []spec.Switch{tor("tor-a", torA, "Ethernet1:eth0")}, lldp: []agentapi.Neighbor{func() agentapi.Neighbor {
			n := seen(strings.ToUpper(mac0), "", torA, "Ethernet1")
			n.Interface = "eth1"
			return n
		}()}, want: []string{CablingOK}},
		{name: "several-interfaces-and-switches", sws: []spec.Switch{tor("tor-a", torA, "Ethernet1:eth0"), tor("tor-b", torB, "Ethernet2:eth1")},
			lldp: []agentapi.Neighbor{seen(mac1, "tor-b", torB, "Ethernet2"), seen(mac0, "tor-b", torB, "Ethernet1")}, want: []string{CablingMismatch, CablingOK}},
		{name: "other-machines-ports-ignored", sws: []spec.Switch{{Name: "tor-a", Ports: []spec.SwitchPort{{Name: "Ethernet1", Machine: "m2", Interface: "eth0"}}}}, want: nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := CheckCabling(cabledMachine("ready"), cablingRack("warn", c.sws...), c.lldp)
			var results []string
			for _, g := range got {
				results = append(results, g.Result)
			}
			if strings.Join(results, ",") != strings.Join(c.want, ",") {
				t.Fatalf("results %v, want %v (%v)", results, c.want, got)
			}
			for _, w := range c.words {
				if !strings.Contains(got[0].String(), w) {
					t.Errorf("%q does not say %q", got[0].String(), w)
				}
			}
		})
	}
}

// factsWith is stored facts with these LLDP neighbours.
func factsWith(lldp ...agentapi.Neighbor) json.RawMessage {
	b, err := json.Marshal(agentapi.Facts{CPU: agentapi.CPU{Count: 2}, LLDP: lldp})
	if err != nil {
		panic(err)
	}
	return b
}

func reasons(evs []inventory.Event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Type+"/"+e.Reason)
	}
	return out
}

func hasEvent(evs []inventory.Event, typeReason string) bool {
	for _, r := range reasons(evs) {
		if r == typeReason {
			return true
		}
	}
	return false
}

// TestDecideCablingAfterCommissioning: the commissioning result's LLDP
// neighbours are checked against the rack when the machine becomes ready.
func TestDecideCablingAfterCommissioning(t *testing.T) {
	wrong := cablingRack("warn", tor("tor-a", torA, "Ethernet1/12:eth0"))
	rep := result(true, "")
	rep.Facts = factsWith(seen(mac0, "tor-b", torB, "Ethernet7"))
	d := Decide(Input{Now: t0, Machine: cabledMachine("ready"), Rack: wrong, Status: at(PhaseCommissioning, StepAgent), Task: task("netboot", "done"), Report: rep}, Policy{})
	c := d.Status.Condition(CondCablingMismatch)
	if d.Status.Phase != PhaseReady || c == nil || c.Status != "True" || c.Reason != "Mismatch" ||
		!strings.Contains(c.Message, "eth0 ("+mac0+") is cabled to tor-b (chassis "+torB+") Ethernet7, the rack declares tor-a Ethernet1/12") {
		t.Fatalf("phase %s, condition %+v", d.Status.Phase, c)
	}
	if !hasEvent(d.Events, "Warning/CablingMismatch") {
		t.Fatalf("events %v, want Warning/CablingMismatch", reasons(d.Events))
	}
	// Looking again says nothing new.
	again := Decide(Input{Now: t0.Add(time.Minute), Machine: cabledMachine("ready"), Rack: wrong, Status: d.Status}, Policy{})
	if len(again.Events) != 0 {
		t.Fatalf("second look: events %v", reasons(again.Events))
	}
	// The declaration fixed: the condition clears with a Normal event.
	right := cablingRack("warn", tor("tor-b", torB, "Ethernet7:eth0"))
	fixed := Decide(Input{Now: t0.Add(2 * time.Minute), Machine: cabledMachine("ready"), Rack: right, Status: again.Status}, Policy{})
	if c := fixed.Status.Condition(CondCablingMismatch); c == nil || c.Status != "False" || !hasEvent(fixed.Events, "Normal/CablingCleared") {
		t.Fatalf("fixed: condition %+v, events %v", c, reasons(fixed.Events))
	}
}

func TestDecideCablingConditions(t *testing.T) {
	ok := factsWith(seen(mac0, "tor-a", torA, "Ethernet1"))
	cases := []struct {
		name   string
		phase  string
		rack   *spec.Rack
		facts  json.RawMessage
		was    string // the condition's status before; "" none
		status string // after; "" no condition
		event  string
	}{
		{name: "ready/matches-no-event", phase: PhaseReady, rack: cablingRack("warn", tor("tor-a", torA, "Ethernet1:eth0")), facts: ok, status: "False"},
		{name: "ready/no-neighbour-unknown", phase: PhaseReady, rack: cablingRack("warn", tor("tor-a", torA, "Ethernet1:eth0", "Ethernet2:eth1")), facts: ok, status: "Unknown", event: "Warning/NoNeighbour"},
		{name: "ready/no-port-declared-nothing", phase: PhaseReady, rack: cablingRack("block"), facts: ok, status: ""},
		{name: "ready/no-rack-nothing", phase: PhaseReady, facts: ok, status: ""},
		{name: "ready/no-facts-nothing", phase: PhaseReady, rack: cablingRack("warn", tor("tor-a", torA, "Ethernet1:eth0")), status: ""},
		{name: "ready/declaration-removed-clears", phase: PhaseReady, rack: cablingRack("warn"), facts: ok, was: "True", status: "False", event: "Normal/CablingCleared"},
		{name: "deployed/rack-changed-raises", phase: PhaseDeployed, rack: cablingRack("block", tor("tor-a", torA, "Ethernet9:eth0")), facts: ok, was: "False", status: "True", event: "Warning/CablingMismatch"},
		{name: "deployed/rack-changed-clears", phase: PhaseDeployed, rack: cablingRack("warn", tor("tor-a", torA, "Ethernet1:eth0")), facts: ok, was: "True", status: "False", event: "Normal/CablingCleared"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := at(c.phase, "")
			st.Facts = c.facts
			if c.was != "" {
				st.SetCondition(CondCablingMismatch, c.was, "", "before", t0)
			}
			state := spec.StateReady
			if c.phase == PhaseDeployed {
				state = spec.StateDeployed
			}
			d := Decide(Input{Now: t0, Machine: cabledMachine(state), Rack: c.rack, Status: st}, Policy{})
			got := ""
			if cond := d.Status.Condition(CondCablingMismatch); cond != nil {
				got = cond.Status
			}
			if got != c.status || d.Status.Phase != c.phase {
				t.Fatalf("phase %s condition %q, want %s %q", d.Status.Phase, got, c.phase, c.status)
			}
			if (c.event == "") != (len(d.Events) == 0) || (c.event != "" && !hasEvent(d.Events, c.event)) {
				t.Fatalf("events %v, want %q", reasons(d.Events), c.event)
			}
		})
	}
}

// TestDecideCablingBlock: with cabling: block a mismatch holds ready →
// deploying, once; fixing the declaration lets it go.
func TestDecideCablingBlock(t *testing.T) {
	st := at(PhaseReady, "")
	st.Facts = factsWith(seen(mac0, "tor-b", torB, "Ethernet7"))
	wrong := cablingRack("block", tor("tor-a", torA, "Ethernet1/12:eth0"))
	in := Input{Now: t0, Machine: cabledMachine("deployed"), Rack: wrong, Status: st, Image: osImage(""), ImageOnRack: onRack("ready", "")}
	d := Decide(in, Policy{})
	if d.Status.Phase != PhaseReady || d.Status.Step != StepCablingHold || d.Task != nil {
		t.Fatalf("held: phase %s step %s task %+v", d.Status.Phase, d.Status.Step, d.Task)
	}
	if !hasEvent(d.Events, "Warning/DeployHeld") || !strings.Contains(d.Status.Message, "tor-b") || !strings.Contains(d.Status.Message, "block") {
		t.Fatalf("held: events %v message %q", reasons(d.Events), d.Status.Message)
	}
	in.Now, in.Status = t0.Add(time.Minute), d.Status
	again := Decide(in, Policy{})
	if len(again.Events) != 0 || again.Task != nil || again.Status.Step != StepCablingHold {
		t.Fatalf("second look while held: events %v task %+v step %s", reasons(again.Events), again.Task, again.Status.Step)
	}
	// warn never holds.
	in.Rack, in.Status = cablingRack("warn", wrong.Spec.Switches...), st
	if w := Decide(in, Policy{}); w.Status.Phase != PhaseDeploying {
		t.Fatalf("warn: phase %s, want deploying", w.Status.Phase)
	}
	// The declaration fixed: the deployment starts.
	in.Rack, in.Status, in.Now = cablingRack("block", tor("tor-b", torB, "Ethernet7:eth0")), again.Status, t0.Add(2*time.Minute)
	rel := Decide(in, Policy{})
	if rel.Status.Phase != PhaseDeploying || rel.Task == nil || rel.Task.Action != inventory.TaskNetboot || !hasEvent(rel.Events, "Normal/CablingCleared") {
		t.Fatalf("fixed: phase %s task %+v events %v", rel.Status.Phase, rel.Task, reasons(rel.Events))
	}
	// Held, then the machine is no longer to be deployed: the hold ends.
	in.Machine, in.Rack, in.Status = cabledMachine("ready"), wrong, again.Status
	if r := Decide(in, Policy{}); r.Status.Phase != PhaseReady || r.Status.Step != "" || r.Task != nil {
		t.Fatalf("state ready: phase %s step %s task %+v", r.Status.Phase, r.Status.Step, r.Task)
	}
	// Recommissioning is not held.
	in.Machine = testMachine("deployed", func(s *spec.MachineSpec) {
		s.Interfaces, s.CommissionGeneration = cabledMachine("").Spec.Interfaces, 1
	})
	if r := Decide(in, Policy{}); r.Status.Phase != PhaseCommissioning {
		t.Fatalf("recommission while held: phase %s", r.Status.Phase)
	}
}

// miscabled gives a commissioning report facts in which m1's eth0 sees
// tor-b Ethernet7.
func miscabled(r *inventory.MachineReport) *inventory.MachineReport {
	r.Facts = factsWith(seen(mac0, "tor-b", torB, "Ethernet7"))
	return r
}

func withFacts(st inventory.MachineStatus, f json.RawMessage) inventory.MachineStatus {
	st.Facts = f
	return st
}

// The attack: a switch (or anything on the provisioning network sending
// LLDP) names itself with control characters, a newline and YAML, and a
// long port ID. The mismatch message names what was heard, but bounded
// and quoted: nothing that can move a terminal's cursor, start a YAML
// line or pass for another string.
func TestCablingMessageMakesNetworkStringsSafe(t *testing.T) {
	evil := "\x1b[2J\x1b[Hleaf-1\nkind: Machine\r\u202eevil"
	long := strings.Repeat("E", 500)
	for _, n := range []agentapi.Neighbor{seen(mac0, evil, torB, long), seen(mac0, "", evil, "Ethernet\"1\\")} {
		checks := CheckCabling(cabledMachine(spec.StateReady), cablingRack("warn", tor("tor-a", torA, "Ethernet1:eth0")), []agentapi.Neighbor{n})
		if len(checks) != 1 || checks[0].Result != CablingMismatch {
			t.Fatalf("checks %+v", checks)
		}
		msg := checks[0].String()
		for _, r := range msg {
			if r < 0x20 || r == 0x7f || r == '\u202e' {
				t.Fatalf("message carries %U: %q", r, msg)
			}
		}
		if strings.Contains(msg, "kind: Machine") && !strings.Contains(msg, `\nkind: Machine`) {
			t.Fatalf("the newline passed: %q", msg)
		}
		if len(msg) > 400 {
			t.Fatalf("message of %d bytes: %q", len(msg), msg)
		}
		t.Logf("%s", msg)
	}
	for in, want := range map[string]string{"Ethernet1/1": "Ethernet1/1", "leaf 1": `"leaf 1"`, "": `""`, "a\"b": `"a\"b"`, "é": `"\u00e9"`,
		strings.Repeat("x", 70): strings.Repeat("x", 64) + "…"} {
		if got := netText(in); got != want {
			t.Errorf("netText(%q) = %s, want %s", in, got, want)
		}
	}
}
