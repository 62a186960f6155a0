package inventory

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"strings"
	"unicode"

	"gopkg.in/yaml.v3"

	"github.com/kilnhq/kiln/spec"
	"github.com/kilnhq/kiln/spec/agentapi"
)

// DiscoveredMachine is one discovered MAC and the facts its agent
// reported (nil when none).
type DiscoveredMachine struct {
	Discovered
	Facts *agentapi.Facts `json:"facts,omitempty"`
}

// DiscoveredMachines lists the discovered MACs that no Machine of the
// applied desired state has (all of them when nothing is applied yet),
// oldest first, each with the facts its agent reported: what kiln
// export discovered prints.
func (s *Store) DiscoveredMachines(ctx context.Context) ([]DiscoveredMachine, error) {
	ds, err := s.ListDiscovered(ctx)
	if err != nil {
		return nil, err
	}
	snap, err := s.Snapshot(ctx, spec.KindMachine)
	known := map[string]bool{}
	if err == nil {
		for _, m := range snap.Inventory.Machines {
			for _, i := range m.Spec.Interfaces {
				known[i.MAC] = true
			}
		}
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i].FirstSeen.Before(ds[j].FirstSeen) })
	var found []DiscoveredMachine
	for _, d := range ds {
		if known[d.MAC] {
			continue // already in the inventory
		}
		found = append(found, DiscoveredMachine{d, s.discoveredFacts(ctx, d)})
	}
	return found, nil
}

// discoveredReport is the one field of a discovered machine's report
// that export reads.
type discoveredReport struct {
	Facts json.RawMessage `json:"facts"`
}

// discoveredFacts reads what the agent of a discovered MAC reported: its
// report, or (stores written before reports had their own keys) its
// status. nil when there are none or they do not decode.
func (s *Store) discoveredFacts(ctx context.Context, d Discovered) *agentapi.Facts {
	name := spec.DiscoveredName(d.MAC)
	raw := json.RawMessage(nil)
	if r, err := GetJSON[discoveredReport](ctx, s, s.Keys().Report(d.Rack, name)); err == nil {
		raw = r.Facts
	} else if st, err := GetJSON[MachineStatus](ctx, s, s.Keys().MachineStatus(name)); err == nil {
		raw = st.Facts
	}
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	f := new(agentapi.Facts)
	if json.Unmarshal(raw, f) != nil {
		return nil // facts of an older agent: export without them
	}
	return f
}

// ExportDiscovered writes one Machine document per discovered machine,
// ready to be reviewed and committed: valid as it stands, with a name, an
// address and a BMC left to fill in.
// Everything is built as YAML nodes and written by the encoder: strings
// that came from the network (vendor class, circuit ID, facts) are either
// dropped, emitted as quoted scalars, or put in comments stripped of
// anything that could end a comment line.
func ExportDiscovered(out io.Writer, ms []DiscoveredMachine) error {
	for _, m := range ms {
		doc, err := machineNode(m.Discovered, m.Facts)
		if err != nil {
			return err
		}
		// Each document starts with its own marker, so that the output
		// can be appended to any inventory file.
		if _, err := io.WriteString(out, "---\n"); err != nil {
			return err
		}
		enc := yaml.NewEncoder(out)
		enc.SetIndent(2)
		if err := enc.Encode(doc); err != nil {
			return fmt.Errorf("encode the document of %s: %w", m.MAC, err)
		}
		if err := enc.Close(); err != nil {
			return fmt.Errorf("encode the document of %s: %w", m.MAC, err)
		}
	}
	return nil
}

// machineNode builds a Machine document for a discovered MAC; the facts its
// agent reported, when there are any, fill in the hardware.
func machineNode(d Discovered, f *agentapi.Facts) (*yaml.Node, error) {
	hw, err := net.ParseMAC(d.MAC)
	if err != nil || len(hw) != 6 {
		return nil, fmt.Errorf("discovered record with MAC %q: not an Ethernet MAC address", d.MAC)
	}
	mac := hw.String()
	arch, firmware := "amd64", "uefi"
	switch {
	case d.Arch == "bios":
		firmware = "bios"
	case strings.Contains(d.Arch, "arm64"):
		arch = "arm64"
	}
	if f != nil && (f.Arch == "arm64" || f.Arch == "amd64") {
		arch = f.Arch
	}

	name := str("node-" + strings.ReplaceAll(mac, ":", ""))
	name.LineComment = "name it"
	boot := flow(pair("name", str("eno1")), pair("mac", quoted(mac)))
	if d.Subnet != "" {
		boot.Content = append(boot.Content, pair("subnet", str(d.Subnet))...)
	}
	ifaces := &yaml.Node{Kind: yaml.SequenceNode, Content: []*yaml.Node{boot}}
	specN := mapping(
		pair("rack", str(d.Rack)),
		pair("arch", str(arch)),
		pair("firmware", str(firmware)),
		pair("state", str("ready")),
		pair("interfaces", ifaces),
	)
	if f != nil {
		addFacts(ifaces, specN, mac, f)
	}
	bmc := flow(pair("driver", str("manual")))
	bmc.LineComment = "set the BMC"
	specN.Content = append(specN.Content, pair("bmc", bmc)...)

	root := mapping(
		pair("apiVersion", str("kiln.dev/v1alpha1")),
		pair("kind", str("Machine")),
		pair("metadata", mapping(pair("name", name))),
		pair("spec", specN),
	)
	root.HeadComment = exportComment(d, f)
	return &yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{root}}, nil
}

// addFacts adds what the agent reported to a discovered machine's spec:
// its other NICs, and its root disk by serial.
func addFacts(ifaces, specN *yaml.Node, mac string, f *agentapi.Facts) {
	i := 2
	for _, n := range f.NICs {
		hw, err := net.ParseMAC(n.MAC)
		if err != nil || len(hw) != 6 || hw.String() == mac {
			continue // the boot interface, or not a MAC: dropped
		}
		nic := flow(pair("name", str("eno"+strconv.Itoa(i))), pair("mac", quoted(hw.String())))
		nic.LineComment = commentText(orDash(n.Driver) + ", not network-booted")
		ifaces.Content = append(ifaces.Content, nic)
		i++
	}
	// The first fixed disk with a serial: a selector that survives
	// renamed devices.
	for _, dk := range f.Disks {
		if !dk.Removable && dk.Serial != "" {
			rd := flow(pair("serial", quoted(dk.Serial)))
			rd.LineComment = commentText(fmt.Sprintf("%s, %d GiB", dk.Name, dk.SizeBytes>>30))
			specN.Content = append(specN.Content, pair("rootDisk", rd)...)
			break
		}
	}
}

// exportComment is the head comment of a discovered machine's document:
// where it was seen and, from its facts, its hardware and cabling, every
// line made safe by commentText.
func exportComment(d Discovered, f *agentapi.Facts) string {
	head := []string{fmt.Sprintf("discovered on rack %s, first seen %s", d.Rack, d.FirstSeen.Format("2006-01-02 15:04:05Z07:00"))}
	if d.VendorClass != "" {
		head[0] += ", vendor class " + d.VendorClass
	}
	if d.CircuitID != "" {
		head[0] += ", switch port " + d.CircuitID
	}
	if f != nil {
		head = append(head, fmt.Sprintf("hardware: %s %s, serial %s; %d CPUs (%s), %d MiB memory",
			orDash(f.DMI.Vendor), orDash(f.DMI.Product), orDash(f.DMI.Serial), f.CPU.Count, orDash(f.CPU.Model), f.Memory.TotalBytes>>20))
		for _, dk := range f.Disks {
			head = append(head, fmt.Sprintf("disk %s: %d GiB %s, serial %s, rotational %v", dk.Name, dk.SizeBytes>>30, orDash(dk.Model), orDash(dk.Serial), dk.Rotational))
		}
		for _, n := range f.LLDP {
			head = append(head, fmt.Sprintf("%s is cabled to switch %s port %s", n.MAC, orDash(n.SystemName), n.PortID))
		}
	}
	for i := range head {
		head[i] = commentText(head[i])
	}

	return strings.Join(head, "\n")
}

// str is a plain string scalar; the encoder quotes it when its text needs
// quoting. Bytes that are not UTF-8 (which YAML cannot carry) become U+FFFD.
func str(s string) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: strings.ToValidUTF8(s, "\uFFFD")}
}

// quoted is a double-quoted string scalar: every character escaped as YAML
// requires.
func quoted(s string) *yaml.Node {
	n := str(s)
	n.Style = yaml.DoubleQuotedStyle
	return n
}

func pair(k string, v *yaml.Node) []*yaml.Node { return []*yaml.Node{str(k), v} }

func mapping(pairs ...[]*yaml.Node) *yaml.Node {
	n := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	for _, p := range pairs {
		n.Content = append(n.Content, p...)
	}
	return n
}

func flow(pairs ...[]*yaml.Node) *yaml.Node {
	n := mapping(pairs...)
	n.Style = yaml.FlowStyle
	return n
}

// commentText makes text from the network safe for a comment line: every
// control or non-printing character (newlines, NUL, Unicode line and
// paragraph separators, NEL, bidi controls) becomes a space, and long
// text is cut.
func commentText(s string) string {
	const max = 200
	s = strings.Map(func(r rune) rune {
		if r == unicode.ReplacementChar || !unicode.IsPrint(r) {
			return ' '
		}
		return r
	}, s)
	if r := []rune(s); len(r) > max {
		s = string(r[:max]) + "…"
	}
	return strings.TrimSpace(s)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
