package main

import (
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/kilnhq/kiln/agents/machine/facts"
	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/spec"
)

// The exported document of a discovered machine is a valid Machine as it
// stands, with what its agent reported filled in.
func TestExportDiscoveredIsValidInventory(t *testing.T) {
	d := inventory.Discovered{MAC: "52:54:00:aa:bb:cc", Rack: "r1", Subnet: "net1", Arch: "efi-x86_64", FirstSeen: time.Unix(0, 0).UTC()}
	f := &facts.Facts{Arch: "amd64", CPU: facts.CPU{Model: "QEMU Virtual CPU", Count: 2}, Memory: facts.Memory{TotalBytes: 1 << 30},
		DMI:   facts.DMI{Vendor: "KilnLab", Product: "E2E", Serial: "S-1"},
		Disks: []facts.Disk{{Name: "sr0", Removable: true, Serial: "CD"}, {Name: "vda", SizeBytes: 64 << 30, Serial: "disk-1"}},
		NICs:  []facts.NIC{{Name: "eth0", MAC: "52:54:00:aa:bb:cc"}, {Name: "eth1", MAC: "52:54:00:aa:bb:cd", Driver: "virtio_net"}},
		LLDP:  []facts.Neighbor{{MAC: "52:54:00:aa:bb:cc", SystemName: "tor-1", PortID: "Ethernet12"}}}
	for _, c := range []struct {
		name  string
		facts *facts.Facts
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
			inv := `apiVersion: kiln.dev/v1alpha1
kind: Rack
metadata: {name: r1}
---
apiVersion: kiln.dev/v1alpha1
kind: Subnet
metadata: {name: net1}
spec: {cidr: 192.0.2.0/24, rack: r1}
`
			r := spec.Load(fstest.MapFS{"inv.yaml": {Data: []byte(inv + doc)}})
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
