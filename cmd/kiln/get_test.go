package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/etcdtest"
	"github.com/kilnhq/kiln/inventory/etcdtest/invtest"
	"github.com/kilnhq/kiln/spec"
	"gopkg.in/yaml.v3"
)

const testInventory = `apiVersion: kiln.dev/v1alpha1
kind: Rack
metadata: {name: r1}
spec: {allowPlaintextPasswords: true}
---
apiVersion: kiln.dev/v1alpha1
kind: Subnet
metadata: {name: net1}
spec: {cidr: 192.0.2.0/24, rack: r1}
---
apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata: {name: vm-1}
spec:
  state: ready
  interfaces:
    - {name: eno1, mac: "52:54:00:42:00:01", subnet: net1, ip: 192.0.2.11}
---
apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata: {name: vm-2}
spec:
  state: ready
  interfaces:
    - {name: eno1, mac: "52:54:00:42:00:02", subnet: net1, ip: 192.0.2.12}
  bmc: {driver: ipmi, address: 192.0.2.102, username: admin, password: hunter2}
`

func loadTestInventory(t *testing.T) *spec.Inventory {
	t.Helper()
	return invtest.Load(t, testInventory)
}

// getMachines prints machines as `kiln get machines [NAME] -o FORMAT` would.
func getMachines(t *testing.T, snap *inventory.Snapshot, statuses map[string]inventory.MachineStatus, name, format string) string {
	t.Helper()
	g := &getter{kind: spec.KindMachine, name: name, format: format}
	tbl := buildTable(snap, spec.KindMachine, format == "wide", statuses, nil)
	if name != "" {
		keep := tbl.rows[:0]
		for _, r := range tbl.rows {
			if r[0] == name {
				keep = append(keep, r)
			}
		}
		tbl.rows = keep
	}
	var b bytes.Buffer
	if err := g.print(&b, tbl, true); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// printedMachine is the part of a printed machine the tests look at.
type printedMachine struct {
	APIVersion string `json:"apiVersion" yaml:"apiVersion"`
	Kind       string
	Name       string // unmanaged machines
	Metadata   struct{ Name string }
	Spec       struct {
		State string
		BMC   struct{ Password struct{ Value string } }
	}
	Status *struct {
		Phase string
		Facts struct {
			CPU struct {
				Model string
				Count int
			}
			Memory struct {
				TotalBytes int64 `json:"totalBytes" yaml:"totalBytes"`
			}
			Disks []struct{ Name, Serial string }
		}
	}
	Report *struct {
		TaskID string `json:"taskID" yaml:"taskID"`
		Result struct{ Reason string }
	}
}

func (d printedMachine) check(t *testing.T, name, out string) {
	t.Helper()
	if d.APIVersion != spec.APIVersion || d.Kind != spec.KindMachine || d.Metadata.Name != name || d.Spec.State != "ready" {
		t.Errorf("%s: the document from the source is missing: %+v\n%s", name, d, out)
	}
	if d.Status == nil || d.Status.Phase != "ready" {
		t.Fatalf("%s: no status:\n%s", name, out)
	}
	f := d.Status.Facts
	if f.CPU.Model != "Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz" || f.CPU.Count != 3 || f.Memory.TotalBytes != 2062475264 ||
		len(f.Disks) != 3 || f.Disks[1].Name != "sda" {
		t.Errorf("%s: facts not printed as an object: %+v\n%s", name, f, out)
	}
}

func TestGetMachinePrintsSpecAndStatus(t *testing.T) {
	golden := goldenFacts(t)
	snap := &inventory.Snapshot{Inventory: loadTestInventory(t), Unmanaged: map[string]inventory.Unmanaged{
		"old-1": {Name: "old-1", RemovedIn: "abc123", RemovedAt: at},
	}}
	statuses := map[string]inventory.MachineStatus{
		"vm-2":  {Phase: "ready", Facts: golden},
		"old-1": {Phase: "ready", Facts: golden},
	}

	t.Run("yaml", func(t *testing.T) {
		out := getMachines(t, snap, statuses, "vm-2", "yaml")
		var d printedMachine
		if err := yaml.Unmarshal([]byte(out), &d); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		d.check(t, "vm-2", out)
		if d.Spec.BMC.Password.Value != "<redacted>" || strings.Contains(out, "hunter2") {
			t.Errorf("the password is not redacted:\n%s", out)
		}
		var n yaml.Node
		if err := yaml.Unmarshal([]byte(out), &n); err != nil {
			t.Fatal(err)
		}
		if cpu := lookup(&n, "status", "facts", "cpu"); cpu == nil || cpu.Kind != yaml.MappingNode {
			t.Errorf("status.facts.cpu is not a mapping:\n%s", out)
		}
	})
	t.Run("json", func(t *testing.T) {
		out := getMachines(t, snap, statuses, "vm-2", "json")
		var d printedMachine
		if err := json.Unmarshal([]byte(out), &d); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		d.check(t, "vm-2", out)
	})
	t.Run("list", func(t *testing.T) {
		out := getMachines(t, snap, statuses, "", "json")
		var list struct{ Items []printedMachine }
		if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Items) != 3 {
			t.Fatalf("want 3 items: %v\n%s", err, out)
		}
		byName := map[string]printedMachine{}
		for _, d := range list.Items {
			byName[d.Metadata.Name+d.Name] = d
		}
		byName["vm-2"].check(t, "vm-2", out)
		if byName["vm-1"].Status != nil || byName["vm-1"].Metadata.Name != "vm-1" {
			t.Errorf("vm-1 has no status and should print without one:\n%s", out)
		}
		if old := byName["old-1"]; old.Status == nil || old.Status.Facts.CPU.Count != 3 {
			t.Errorf("the unmanaged machine lacks its status:\n%s", out)
		}
		yout := getMachines(t, snap, statuses, "", "yaml")
		dec := yaml.NewDecoder(strings.NewReader(yout))
		var docs int
		for {
			var d printedMachine
			if err := dec.Decode(&d); err == io.EOF {
				break
			} else if err != nil {
				t.Fatalf("%v\n%s", err, yout)
			}
			if d.Metadata.Name == "vm-2" {
				d.check(t, "vm-2", yout)
			}
			docs++
		}
		if docs != 3 {
			t.Errorf("want 3 YAML documents, got %d:\n%s", docs, yout)
		}
	})
	t.Run("hostile", func(t *testing.T) {
		serial := "X\x1b[2J\nFAKE: ok"
		raw := bytes.Replace(golden, []byte(`"S6B0NL0T123456X"`), []byte(`"X\u001b[2J\nFAKE: ok"`), 1)
		hs := map[string]inventory.MachineStatus{"vm-2": {Phase: "ready", Facts: raw, Reason: "bad\x1b[2J\rreason"}}
		for _, format := range []string{"yaml", "json"} {
			out := getMachines(t, snap, hs, "vm-2", format)
			if strings.ContainsAny(out, "\x1b\r") {
				t.Errorf("-o %s holds a raw control character:\n%q", format, out)
			}
			var d struct {
				Status struct {
					Facts struct{ Disks []struct{ Serial string } }
				}
			}
			var err error
			if format == "yaml" {
				err = yaml.Unmarshal([]byte(out), &d)
			} else {
				err = json.Unmarshal([]byte(out), &d)
			}
			if err != nil || len(d.Status.Facts.Disks) == 0 || d.Status.Facts.Disks[0].Serial != serial {
				t.Errorf("-o %s: the serial should read back as it was reported: %v %+v\n%s", format, err, d, out)
			}
		}
		out := getMachines(t, snap, hs, "", "wide")
		if strings.ContainsAny(out, "\x1b\r") || strings.Count(out, "\n") != 4 {
			t.Errorf("the table holds a raw control character or an extra line:\n%q", out)
		}
	})
}

// lookup follows mapping keys from a document node.
func lookup(n *yaml.Node, keys ...string) *yaml.Node {
	if n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	for _, k := range keys {
		if n.Kind != yaml.MappingNode {
			return nil
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == k {
				next = n.Content[i+1]
			}
		}
		if next == nil {
			return nil
		}
		n = next
	}
	return n
}

// The commands against a real etcd: what the agent reported reaches
// describe and get -o yaml|json.
func TestDescribeAndGetFromEtcd(t *testing.T) {
	cli, cfg := etcdtest.Start(t)
	ctx := context.Background()
	store := invtest.Apply(t, cli, loadTestInventory(t))
	err := inventory.UpdateJSON(ctx, store, store.Keys().MachineStatus("vm-2"), func(st *inventory.MachineStatus) error {
		st.Phase, st.Facts, st.Rack, st.BootTaskID = "ready", goldenFacts(t), "r1", "T1"
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The agent's report lives under its rack's prefix.
	err = store.UpdateReport(ctx, "r1", "vm-2", "T1", clientv3.NoLease, func(r *inventory.MachineReport) {
		r.Result = &inventory.AgentResult{Success: true, Reason: "commissioned: 3 disks, 2 NICs", At: at}
	})
	if err != nil {
		t.Fatal(err)
	}
	kiln := func(args ...string) string {
		t.Helper()
		var out, errOut bytes.Buffer
		if code := run(ctx, append(args, "--etcd-endpoints", cfg.ClientURL), &out, &errOut); code != exitOK {
			t.Fatalf("kiln %s: exit %d\n%s%s", strings.Join(args, " "), code, out.String(), errOut.String())
		}
		return out.String()
	}

	out := kiln("describe", "machine", "vm-2")
	ls := lines(out)
	for _, want := range []string{
		"Agent result: success at 2025-01-02T03:04:05Z: commissioned: 3 disks, 2 NICs",
		"CPU: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz, 3 logical CPUs in 2 sockets",
		"sda 465.8 GiB WD-WCAYUS123456 WDC WD5000AAKX-0 pci-0000:00:1f.2-ata-1.0 true",
	} {
		if !hasLine(ls, want) {
			t.Errorf("describe: no line %q in\n%s", want, out)
		}
	}
	if out := kiln("describe", "machine", "vm-1"); !strings.Contains(out, "no reconciler has reported") || strings.Contains(out, "Facts") {
		t.Errorf("describe of a machine without status:\n%s", out)
	}

	out = kiln("get", "machine", "vm-2", "-o", "yaml")
	var d printedMachine
	if err := yaml.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	d.check(t, "vm-2", out)
	if d.Report == nil || d.Report.TaskID != "T1" || d.Report.Result.Reason != "commissioned: 3 disks, 2 NICs" {
		t.Errorf("get -o yaml: no report of boot T1 with the agent's result:\n%s", out)
	}

	out = kiln("get", "machines", "-o", "json")
	var list struct{ Items []printedMachine }
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Items) != 2 {
		t.Fatalf("get machines -o json: %v\n%s", err, out)
	}
	list.Items[1].check(t, "vm-2", out)
}
