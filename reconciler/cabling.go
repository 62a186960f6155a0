package reconciler

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/spec"
	"github.com/kilnhq/kiln/spec/agentapi"
	"github.com/prometheus/client_golang/prometheus"
)

// Results of checking one declared switch port.
const (
	CablingOK          = "ok"
	CablingMismatch    = "mismatch"
	CablingNoNeighbour = "no-neighbour"
)

// StepCablingHold: ready, the deployment held because the machine's
// cabling does not match its rack's declaration and the rack's cabling
// policy is block.
const StepCablingHold = "cabling-hold"

// PortCheck is the check of one switch port a rack declares for one of
// the machine's interfaces against the LLDP neighbour seen on it.
type PortCheck struct {
	Interface, MAC string // the machine's interface (its spec)
	Switch, Port   string // what the rack declares
	ChassisID      string // the declared switch's chassis ID, if any
	Result         string // CablingOK, CablingMismatch or CablingNoNeighbour
	Seen           *agentapi.Neighbor
}

// String says what was found, naming both sides of a mismatch.
func (c PortCheck) String() string {
	ours := c.Interface + " (" + orUnknown(c.MAC) + ")"
	declared := c.Switch + " " + c.Port
	switch c.Result {
	case CablingNoNeighbour:
		return fmt.Sprintf("no LLDP neighbour seen on %s, the rack declares %s", ours, declared)
	case CablingMismatch:
		return fmt.Sprintf("%s is cabled to %s %s, the rack declares %s", ours, c.seenSwitch(), c.seenPort(), declared)
	}
	return fmt.Sprintf("%s is cabled to %s as declared", ours, declared)
}

// seenSwitch and seenPort are what the neighbour says, as heard: strings
// from the network, made safe by netText.
func (c PortCheck) seenSwitch() string {
	n := c.Seen
	name, chassis := netText(n.SystemName), netText(n.ChassisID)
	switch {
	case c.ChassisID != "" && n.SystemName != "":
		return name + " (chassis " + chassis + ")"
	case c.ChassisID != "" || n.SystemName == "":
		return "chassis " + chassis
	}
	return name
}

func (c PortCheck) seenPort() string { return netText(neighbourPort(*c.Seen)) }

// maxNetText bounds a string from the network in a message.
const maxNetText = 64

// netText is a string an LLDP frame carried, for a condition message or
// an event (read in terminals, YAML, web pages): at most maxNetText
// characters, and quoted, Go-style, ASCII only, when it holds anything
// but printable ASCII other than quotes and backslashes, so that no
// control character, newline or look-alike passes as is.
func netText(s string) string {
	cut := false
	if len(s) > maxNetText {
		s, cut = s[:maxNetText], true
	}
	plain := s != ""
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
			plain = false
			break
		}
	}
	if !plain {
		s = strconv.QuoteToASCII(s)
	}
	if cut {
		s += "…"
	}
	return s
}

func orUnknown(s string) string {
	if s == "" {
		return "no MAC"
	}
	return s
}

// CheckCabling compares the switch ports rack declares for machine with
// the LLDP neighbours its agent saw, one check per declared port, in the
// rack's order. A machine the rack declares no port for gets none.
//
// The neighbour of a port is the one seen on the MAC of the machine's
// interface of that name. The chassis is the switch's chassis ID when the
// rack declares one, else its name against the neighbour's system name;
// the port name is compared with the LLDP port ID when its subtype is
// interface-name or local, otherwise with the port description.
func CheckCabling(machine *spec.Machine, rack *spec.Rack, lldp []agentapi.Neighbor) []PortCheck {
	if machine == nil || rack == nil {
		return nil
	}
	var out []PortCheck
	for _, sw := range rack.Spec.Switches {
		for _, p := range sw.Ports {
			if p.Machine != machine.Metadata.Name {
				continue
			}
			c := PortCheck{Interface: p.Interface, MAC: interfaceMAC(machine, p.Interface), Switch: sw.Name, Port: p.Name, ChassisID: sw.ChassisID, Result: CablingNoNeighbour}
			if n := neighbourOn(lldp, c.MAC); n != nil {
				c.Seen = n
				c.Result = CablingMismatch
				if sameChassis(sw, *n) && neighbourPort(*n) == p.Name {
					c.Result = CablingOK
				}
			}
			out = append(out, c)
		}
	}
	return out
}

// declaresPorts reports whether rack declares any switch port for machine.
func declaresPorts(machine string, rack *spec.Rack) bool {
	if rack == nil {
		return false
	}
	for _, sw := range rack.Spec.Switches {
		for _, p := range sw.Ports {
			if p.Machine == machine {
				return true
			}
		}
	}
	return false
}

func interfaceMAC(m *spec.Machine, name string) string {
	for _, i := range m.Spec.Interfaces {
		if i.Name == name {
			return i.MAC
		}
	}
	return ""
}

// neighbourOn is the neighbour seen on the interface with this MAC.
func neighbourOn(lldp []agentapi.Neighbor, mac string) *agentapi.Neighbor {
	if mac == "" {
		return nil
	}
	for i := range lldp {
		if sameMAC(lldp[i].MAC, mac) {
			return &lldp[i]
		}
	}
	return nil
}

func sameChassis(sw spec.Switch, n agentapi.Neighbor) bool {
	if sw.ChassisID != "" {
		return sameMAC(sw.ChassisID, n.ChassisID)
	}
	return n.SystemName != "" && strings.EqualFold(sw.Name, n.SystemName)
}

// sameMAC compares two MAC addresses in any notation; other IDs are
// compared ignoring case.
func sameMAC(a, b string) bool {
	ha, erra := net.ParseMAC(a)
	hb, errb := net.ParseMAC(b)
	if erra == nil && errb == nil {
		return bytes.Equal(ha, hb)
	}
	return strings.EqualFold(a, b)
}

// neighbourPort is the neighbour's port name: the port ID when its
// subtype names an interface, else the port description.
func neighbourPort(n agentapi.Neighbor) string {
	switch n.PortIDType {
	case "interface-name", "local":
		return n.PortID
	}
	return n.PortDescription
}

// lldpOf reads the LLDP neighbours out of the stored hardware facts;
// facts that cannot be read have none.
func lldpOf(raw json.RawMessage) []agentapi.Neighbor {
	var f struct {
		LLDP []agentapi.Neighbor `json:"lldp"`
	}
	if len(raw) == 0 || json.Unmarshal(raw, &f) != nil {
		return nil
	}
	return f.LLDP
}

// checkCabling sets CondCablingMismatch from the machine's stored facts
// and its rack's declaration: True naming every port that does not match,
// Unknown (reason NoNeighbour) when no port mismatches but some saw no
// LLDP neighbour, False when every declared port matches. An event says
// when it is raised (Warning CablingMismatch or NoNeighbour) and when a
// mismatch clears (Normal CablingCleared). A machine its rack declares
// no port for, or without facts yet, gets no condition.
func (d *decider) checkCabling() {
	st, now := d.st(), d.in.Now
	var was inventory.Condition
	if c := st.Condition(CondCablingMismatch); c != nil {
		was = *c
	}
	if !declaresPorts(d.name(), d.in.Rack) {
		if was.Status != "" && was.Status != "False" {
			st.SetCondition(CondCablingMismatch, "False", "NotDeclared", "the rack declares no switch port for this machine", now)
			d.event("Normal", "CablingCleared", "the rack no longer declares a switch port for this machine")
		}
		return
	}
	if len(st.Facts) == 0 {
		return // not commissioned yet: nothing seen
	}
	checks := CheckCabling(d.in.Machine, d.in.Rack, lldpOf(st.Facts))
	status, reason, msg := cablingCondition(checks)
	st.SetCondition(CondCablingMismatch, status, reason, msg, now)
	if was.Status == status && was.Message == msg {
		return
	}
	switch {
	case status == "True":
		d.event("Warning", "CablingMismatch", msg)
	case status == "Unknown":
		d.event("Warning", "NoNeighbour", msg)
	case was.Status == "True":
		d.event("Normal", "CablingCleared", msg)
	}
}

// cablingCondition sums up the checks of a machine's declared ports.
func cablingCondition(checks []PortCheck) (status, reason, msg string) {
	var bad []string
	mismatch := false
	for _, c := range checks {
		if c.Result != CablingOK {
			bad = append(bad, c.String())
		}
		mismatch = mismatch || c.Result == CablingMismatch
	}
	switch {
	case mismatch:
		return "True", "Mismatch", strings.Join(bad, "; ")
	case len(bad) > 0:
		return "Unknown", "NoNeighbour", strings.Join(bad, "; ") + " (is LLDP enabled on the switch?)"
	}
	return "False", "Matches", fmt.Sprintf("all %d declared switch ports match the LLDP neighbours", len(checks))
}

// cablingHeld reports whether the rack's cabling policy (block) holds a
// ready machine's deployment: while CondCablingMismatch is True. It says
// so once (an event and the status message), and ends the hold when the
// mismatch clears or the machine is no longer to be deployed.
func (d *decider) cablingHeld() bool {
	st := d.st()
	c := st.Condition(CondCablingMismatch)
	held := d.spec().State == spec.StateDeployed && d.in.Rack != nil && d.in.Rack.Spec.Cabling == "block" &&
		c != nil && c.Status == "True"
	switch {
	case held && st.Step != StepCablingHold:
		d.setStep(StepCablingHold)
		st.Message = "deployment held by rack " + st.Rack + "'s cabling policy (block): " + c.Message +
			"; fix the cabling or the rack's declaration and recommission, or set the rack's cabling to warn"
		d.event("Warning", "DeployHeld", st.Message)
	case !held && st.Step == StepCablingHold:
		d.setStep("")
		st.Message = ""
	}
	return held
}

var cablingDesc = prometheus.NewDesc("kiln_cabling_mismatch_machines",
	"Machines whose LLDP neighbours contradict their rack's declared switch ports (CablingMismatch True), by rack (reported by the region leader).",
	[]string{"rack"}, nil)

// cablingCollector reports kiln_cabling_mismatch_machines from the
// leader's caches at scrape time, every rack with machines included (0
// when all match); a follower reports nothing.
type cablingCollector struct{ r *Region }

func (c cablingCollector) Describe(ch chan<- *prometheus.Desc) { ch <- cablingDesc }

func (c cablingCollector) Collect(ch chan<- prometheus.Metric) {
	cur := c.r.current()
	if cur == nil {
		return
	}
	for rack, n := range cur.cablingCounts() {
		ch <- prometheus.MustNewConstMetric(cablingDesc, prometheus.GaugeValue, float64(n), rack)
	}
}

// cablingCounts counts the desired machines with CablingMismatch True by
// rack; every rack with machines has an entry.
func (c *controller) cablingCounts() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{}
	for name, m := range c.desired {
		st := c.status[name].st
		n := 0
		if cond := st.Condition(CondCablingMismatch); cond != nil && cond.Status == "True" {
			n = 1
		}
		out[m.Spec.Rack] += n
	}
	return out
}
