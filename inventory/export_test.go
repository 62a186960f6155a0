package inventory

import (
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/kilnhq/kiln/spec"
	"github.com/kilnhq/kiln/spec/agentapi"
)

// The exported document of a discovered machine is a valid Machine as it
// stands, with what its agent reported filled in.
func TestExportDiscoveredIsValidInventory(t *testing.T) {
	d := Discovered{MAC: "52:54:00:aa:bb:cc", Rack: "r1", Subnet: "net1", Arch: "efi-x86_64", FirstSeen: time.Unix(0, 0).UTC()}
	f := &agentapi.Facts{Arch: "amd64", CPU: agentapi.CPU{Model: "QEMU Virtual CPU", Count: 2}, Memory: agentapi.Memory{TotalBytes: 1 << 30},
		DMI:   agentapi.DMI{Vendor: "KilnLab", Product: "E2E", Serial: "S-1"},
		Disks: []agentapi.Disk{{Name: "sr0", Removable: true, Serial: "CD"}, {Name: "vda", SizeBytes: 64 << 30, Serial: "disk-1"}},
		NICs:  []agentapi.NIC{{Name: "eth0", MAC: "52:54:00:aa:bb:cc"}, {Name: "eth1", MAC: "52:54:00:aa:bb:cd", Driver: "virtio_net"}},
		LLDP:  []agentapi.Neighbor{{MAC: "52:54:00:aa:bb:cc", SystemName: "tor-1", PortID: "Ethernet12"}}}
	for _, c := range []struct {
		name  string
		facts *agentapi.Facts
		want  []string
	}{
		{"without-facts", nil, []string{`mac: "52:54:00:aa:bb:cc", subnet: net1`, "driver: manual"}},
		{"with-facts", f, []string{`rootDisk: {serial: "disk-1"}`, `mac: "52:54:00:aa:bb:cd"`, "KilnLab E2E, serial S-1", "switch tor-1 port Ethernet12"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			doc := machineDoc(d, c.facts)
			for _, w := range c.want {
				if !strings.Contains(doc, w) {
					t.Errorf("missing %q in\n%s", w, doc)
				}
			}
			r := spec.Load(fstest.MapFS{"inv.yaml": {Data: []byte(exportInventory + doc)}})
			if r.Problems.Errors() > 0 {
				t.Fatalf("exported document is not valid:\n%s\n%s", r.Problems, doc)
			}
			m := r.Inventory.Machines["node-525400aabbcc"]
			if m == nil || m.Spec.Rack != "r1" {
				t.Fatalf("machine not read back: %+v", m)
			}
			if c.facts != nil && (len(m.Spec.Interfaces) != 2 || m.Spec.RootDisk == nil || m.Spec.RootDisk.Serial != "disk-1") {
				t.Fatalf("facts not carried into the spec: %+v", m.Spec)
			}
		})
	}
}

// The attack of issue 12: a DHCP vendor class (option 60) and facts that
// try to close the document and add one of their own, a Machine already
// deployed. The output is still exactly one Machine, the one Kiln built,
// still valid, and the hostile text appears only inside comments or
// quoted scalars.
func TestExportDiscoveredRefusesInjectedDocuments(t *testing.T) {
	inject := "x\n---\napiVersion: kiln.dev/v1alpha1\nkind: Machine\nmetadata: {name: evil}\nspec: {rack: r1, state: deployed, interfaces: [{name: eno1, mac: \"52:54:00:00:00:66\"}], bmc: {driver: manual}}\n"
	d := Discovered{MAC: "52:54:00:aa:bb:cc", Rack: "r1", Subnet: "net1", FirstSeen: time.Unix(0, 0).UTC(),
		VendorClass: "PXEClient" + inject, CircuitID: "\u2028kind: Machine\u2029state: deployed", Relay: inject}
	f := &agentapi.Facts{DMI: agentapi.DMI{Vendor: inject, Serial: "\r\n---\n"},
		Disks: []agentapi.Disk{{Name: inject, Serial: "\"}\nstate: deployed\n#", Model: inject}},
		NICs:  []agentapi.NIC{{MAC: "52:54:00:aa:bb:cd\nstate: deployed"}, {MAC: "52:54:00:aa:bb:ce", Driver: inject}},
		LLDP:  []agentapi.Neighbor{{MAC: inject, SystemName: inject, PortID: inject}}}
	out := machineDoc(d, f)
	checkExported(t, out, []string{"node-525400aabbcc"})
	if strings.Contains(out, "\nstate: deployed") || strings.Contains(out, "\n  state: deployed") || strings.Contains(out, "\nkind: Machine\nmetadata: {name: evil}") {
		t.Fatalf("hostile text reached a line of its own:\n%s", out)
	}
	r := spec.Load(fstest.MapFS{"inv.yaml": {Data: []byte(exportInventory + out)}})
	if r.Problems.Errors() > 0 {
		t.Fatalf("exported document is not valid:\n%s\n%s", r.Problems, out)
	}
	if len(r.Inventory.Machines) != 1 || r.Inventory.Machines["node-525400aabbcc"] == nil || r.Inventory.Machines["node-525400aabbcc"].Spec.State != "ready" {
		t.Fatalf("want exactly node-525400aabbcc, ready; got %+v", r.Inventory.Machines)
	}
	m := r.Inventory.Machines["node-525400aabbcc"]
	if m.Spec.RootDisk == nil || m.Spec.RootDisk.Serial != f.Disks[0].Serial {
		t.Errorf("the disk serial must survive as an escaped scalar, got %+v", m.Spec.RootDisk)
	}
	if len(m.Spec.Interfaces) != 2 || m.Spec.Interfaces[1].MAC != "52:54:00:aa:bb:ce" {
		t.Errorf("a NIC whose MAC does not parse must be dropped, the other kept: %+v", m.Spec.Interfaces)
	}
}

// machineDoc is the Machine document of one discovered MAC, as text.
func machineDoc(d Discovered, f *agentapi.Facts) string {
	var b strings.Builder
	if err := ExportDiscovered(&b, []DiscoveredMachine{{d, f}}); err != nil {
		return "# " + commentText(err.Error()) + "\n"
	}
	return b.String()
}

const exportInventory = `apiVersion: kiln.dev/v1alpha1
kind: Rack
metadata: {name: r1}
---
apiVersion: kiln.dev/v1alpha1
kind: Subnet
metadata: {name: net1}
spec: {cidr: 192.0.2.0/24, rack: r1}
`

// FuzzExportDiscovered feeds hostile vendor classes and facts strings to
// the export and checks that its output decodes to exactly the Machine
// documents Kiln meant, with no key, anchor, alias or tag the input added.
func FuzzExportDiscovered(f *testing.F) {
	for _, s := range []string{
		"PXEClient:Arch:00007", "x\n---\nkind: Machine\nspec: {state: deployed}\n", "\"'}]", "\x00\x01\x1b[2J",
		"a\u2028b\u2029c\u0085d", "&anchor x", "*alias", "!!binary aGk=", "!<tag:yaml.org,2002:str> x", "# comment\n- item",
		"key: value", "...\n%YAML 1.2\n---", "\ufeffbom", "\r\nstate: deployed", "{a: 1}", "|\n  block",
	} {
		f.Add(s, s, "52:54:00:12:34:56")
	}
	f.Fuzz(func(t *testing.T, vendor, fact, nicMAC string) {
		ms := []DiscoveredMachine{
			{Discovered{MAC: "52:54:00:aa:bb:01", Rack: "r1", Subnet: "net1", VendorClass: vendor, CircuitID: fact, Relay: fact}, nil},
			{Discovered{MAC: "52:54:00:aa:bb:02", Rack: "r1", VendorClass: fact}, &agentapi.Facts{Arch: fact,
				CPU: agentapi.CPU{Model: fact}, DMI: agentapi.DMI{Vendor: vendor, Product: fact, Serial: fact},
				Disks: []agentapi.Disk{{Name: fact, Model: vendor, Serial: fact}},
				NICs:  []agentapi.NIC{{Name: fact, MAC: nicMAC, Driver: vendor}, {MAC: fact}},
				LLDP:  []agentapi.Neighbor{{MAC: fact, SystemName: vendor, PortID: fact}}}},
		}
		var b strings.Builder
		if err := ExportDiscovered(&b, ms); err != nil {
			t.Fatal(err)
		}
		checkExported(t, b.String(), []string{"node-525400aabb01", "node-525400aabb02"})
	})
}

// checkExported decodes export output and fails unless it is exactly one
// Machine per wanted name, in order, with only the keys export writes.
func checkExported(t *testing.T, out string, names []string) {
	t.Helper()
	allowed := map[string]map[string]bool{
		"":          {"apiVersion": true, "kind": true, "metadata": true, "spec": true},
		"metadata":  {"name": true},
		"spec":      {"rack": true, "arch": true, "firmware": true, "state": true, "interfaces": true, "rootDisk": true, "bmc": true},
		"interface": {"name": true, "mac": true, "subnet": true},
		"rootDisk":  {"serial": true},
		"bmc":       {"driver": true},
	}
	dec := yaml.NewDecoder(strings.NewReader(out))
	var docs []*yaml.Node
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("output does not parse: %v\n%s", err, out)
		}
		docs = append(docs, &n)
	}
	if len(docs) != len(names) {
		t.Fatalf("%d documents, want %d:\n%s", len(docs), len(names), out)
	}
	var walk func(n *yaml.Node, where string)
	walk = func(n *yaml.Node, where string) {
		if n.Anchor != "" || n.Kind == yaml.AliasNode {
			t.Fatalf("anchor or alias at %s:\n%s", where, out)
		}
		if n.Kind == yaml.ScalarNode && n.Tag != "!!str" {
			t.Fatalf("scalar %q at %s has tag %s:\n%s", n.Value, where, n.Tag, out)
		}
		switch n.Kind {
		case yaml.MappingNode:
			if len(n.Content)%2 != 0 {
				t.Fatalf("odd mapping at %s", where)
			}
			for i := 0; i < len(n.Content); i += 2 {
				k := n.Content[i].Value
				if !allowed[where][k] {
					t.Fatalf("key %q at %q was not written by export:\n%s", k, where, out)
				}
				sub := k
				if k == "interfaces" {
					sub = "interface"
				}
				walk(n.Content[i+1], sub)
			}
		case yaml.SequenceNode:
			if where != "interface" {
				t.Fatalf("sequence at %s:\n%s", where, out)
			}
			for _, c := range n.Content {
				walk(c, where)
			}
		}
	}
	for i, d := range docs {
		if d.Kind != yaml.DocumentNode || len(d.Content) != 1 || d.Content[0].Kind != yaml.MappingNode {
			t.Fatalf("document %d is not a mapping:\n%s", i, out)
		}
		walk(d.Content[0], "")
		var m struct {
			Kind     string
			Metadata struct{ Name string }
			Spec     struct{ State string }
		}
		if err := d.Decode(&m); err != nil {
			t.Fatal(err)
		}
		if m.Kind != "Machine" || m.Metadata.Name != names[i] || m.Spec.State != "ready" {
			t.Fatalf("document %d: kind %q name %q state %q, want Machine %s ready:\n%s", i, m.Kind, m.Metadata.Name, m.Spec.State, names[i], out)
		}
	}
}

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// The export's output, byte for byte: without facts, with them, and
// under attack.
func TestExportDiscoveredGolden(t *testing.T) {
	inject := "x\n---\nkind: Machine\n"
	d := Discovered{MAC: "52:54:00:aa:bb:cc", Rack: "r1", Subnet: "net1", Arch: "efi-arm64", FirstSeen: time.Unix(0, 0).UTC(),
		VendorClass: "PXEClient" + inject, CircuitID: "Ethernet1/1"}
	f := &agentapi.Facts{Arch: "amd64", CPU: agentapi.CPU{Model: "QEMU Virtual CPU", Count: 2}, Memory: agentapi.Memory{TotalBytes: 1 << 30},
		DMI:   agentapi.DMI{Vendor: "KilnLab", Product: inject, Serial: "S-1"},
		Disks: []agentapi.Disk{{Name: "sr0", Removable: true, Serial: "CD"}, {Name: "vda", SizeBytes: 64 << 30, Serial: "disk\"1", Model: "virtio"}},
		NICs:  []agentapi.NIC{{Name: "eth0", MAC: "52:54:00:aa:bb:cc"}, {Name: "eth1", MAC: "52:54:00:AA:BB:CD", Driver: "virtio_net"}, {MAC: "bogus"}},
		LLDP:  []agentapi.Neighbor{{MAC: "52:54:00:aa:bb:cc", SystemName: "tor-1", PortID: "Ethernet12"}}}
	var b strings.Builder
	if err := ExportDiscovered(&b, []DiscoveredMachine{{d, nil}, {Discovered{MAC: "52:54:00:aa:bb:dd", Rack: "r2", Arch: "bios"}, f}}); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "export-discovered.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if b.String() != string(want) {
		t.Errorf("got\n%s\nwant (%s; -update rewrites it)\n%s", b.String(), golden, want)
	}
}
