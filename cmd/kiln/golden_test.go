package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/etcdtest/invtest"
	"github.com/kilnhq/kiln/spec"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// checkGolden compares out with testdata/name; -update rewrites it.
func checkGolden(t *testing.T, name, out string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if out != string(want) {
		t.Errorf("got\n%s\nwant (%s; -update rewrites it)\n%s", out, path, want)
	}
}

const goldenExtra = `
---
apiVersion: kiln.dev/v1alpha1
kind: Image
metadata: {name: debian}
spec: {purpose: os, disk: {url: "http://images.example/debian.raw.zst", sha256: 0000000000000000000000000000000000000000000000000000000000000000}}
---
apiVersion: kiln.dev/v1alpha1
kind: Image
metadata: {name: ephemeral}
spec:
  purpose: ephemeral
  kernel: {url: "http://images.example/vmlinuz", sha256: 1111111111111111111111111111111111111111111111111111111111111111}
  initrd: {url: "http://images.example/initrd", sha256: 2222222222222222222222222222222222222222222222222222222222222222}
---
apiVersion: kiln.dev/v1alpha1
kind: Profile
metadata: {name: web}
spec: {selector: {matchLabels: {role: web, tier: front}}, machine: {image: debian}}
`

// Every kind's table, narrow and wide, byte for byte.
func TestGetTablesGolden(t *testing.T) {
	inv := invtest.Load(t, testInventory+goldenExtra)
	at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	snap := &inventory.Snapshot{Inventory: inv,
		Unmanaged: map[string]inventory.Unmanaged{"vm-0": {Name: "vm-0", RemovedIn: "0123456789abcdef", RemovedAt: at}}}
	statuses := map[string]inventory.MachineStatus{
		"vm-0": {Phase: "deployed"},
		"vm-1": {Phase: "ready", Step: "cabling-hold", Conditions: []inventory.Condition{{Type: "CablingMismatch", Status: "True", Reason: "Mismatch"}}},
		"vm-2": {Phase: "failed-commissioning", Step: "agent", Reason: "the machine agent reported: a reason long enough to be cut at sixty characters of text",
			Conditions: []inventory.Condition{{Type: "CablingMismatch", Status: "Unknown", Reason: "NoNeighbour"}}},
	}
	images := map[string][]inventory.ImageStatus{"debian": {{Rack: "r2", State: "failed", Message: "sha256 mismatch"}, {Rack: "r1", State: "ready"}}}
	var b bytes.Buffer
	for _, kind := range []string{spec.KindMachine, spec.KindRack, spec.KindSubnet, spec.KindImage, spec.KindProfile} {
		for _, format := range []string{"", "wide", "name"} {
			g := &getter{kind: kind, format: format}
			b.WriteString("# " + kind + " -o " + format + "\n")
			if err := g.print(&b, buildTable(snap, kind, format == "wide", statuses, images), true); err != nil {
				t.Fatal(err)
			}
		}
	}
	checkGolden(t, "get-tables.golden", b.String())
}

// describe of a machine with every part of its status, byte for byte.
func TestDescribeGolden(t *testing.T) {
	inv := loadTestInventory(t)
	at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	st := &inventory.MachineStatus{Phase: "deploying", Step: "agent", StepStartedAt: at, PhaseStartedAt: at,
		Message: "deploying image debian", Reason: "an earlier failure", Attempts: 2, Paused: "ready",
		BootPurpose: "deploy", Rack: "r1", TaskID: "T2", BootTaskID: "T2", Addresses: []string{"192.0.2.12", "192.0.2.13"},
		Power: "on", PowerAt: at, DeployedImage: "debian", DeployedAt: at, SourceRevision: "0123456789abcdef",
		ObservedGeneration: 7, UpdatedAt: at, Facts: goldenFacts(t),
		OSReport:   &inventory.OSReport{Hostname: "old", At: at},
		Conditions: []inventory.Condition{{Type: "PowerReachable", Status: "True", Reason: "TaskDone", Since: at, Message: "netboot done"}}}
	report := &inventory.MachineReport{TaskID: "T1",
		Progress: &inventory.AgentProgress{Phase: "writing", BytesWritten: 1 << 20, TotalBytes: 4 << 20, At: at},
		Result:   &inventory.AgentResult{Success: false, Reason: "disk vanished", At: at},
		OSReport: &inventory.OSReport{Hostname: "vm-2", BootID: "b-1", Address: "192.0.2.12", At: at}}
	task := &inventory.PowerTask{ID: "T2", Action: "netboot", State: inventory.TaskFailed, CreatedAt: at, DoneAt: at, Agent: "rack-a", Error: "BMC timeout"}
	d := description{name: "vm-2", machine: inv.Machines["vm-2"], pointer: inventory.Pointer{Revision: "0123456789abcdef", AppliedAt: at},
		timeline: []inventory.TimelineEvent{{Time: at, Type: "dhcp", Detail: "offer 192.0.2.12"}},
		status:   st, report: report, task: task}
	var b bytes.Buffer
	if err := d.write(&b); err != nil {
		t.Fatal(err)
	}
	// Facts of a newer agent, and facts that do not decode.
	var f map[string]any
	if err := json.Unmarshal(goldenFacts(t), &f); err != nil {
		t.Fatal(err)
	}
	f["version"] = 99
	f["lldp"] = []any{map[string]any{"interface": "eth0", "systemName": "tor-1", "portID": "Ethernet12", "portDescription": "uplink",
		"chassisID": "aa:bb:cc:00:00:01", "chassisIDType": "mac"}}
	f["disks"], f["nics"], f["errors"] = nil, nil, []string{"dmi: permission denied"}
	newer, _ := json.Marshal(f)
	for _, raw := range []json.RawMessage{newer, json.RawMessage(`{"cpu": 1}`), nil} {
		writeFacts(printer{&b}, "vm-2", raw)
	}
	checkGolden(t, "describe.golden", b.String())
}

// get --watch prints the rows that changed and marks the ones that went.
func TestChangedRows(t *testing.T) {
	before := &table{header: []string{"NAME", "PHASE"}, rows: [][]string{{"a", "ready"}, {"b", "ready"}, {"c", "ready"}}}
	next := &table{header: before.header, rows: [][]string{{"a", "ready"}, {"c", "deploying"}, {"d", "-"}},
		items: map[string]any{"a": 1, "c": 3, "d": 4}}
	got := changedRows(before.byName(), next)
	want := [][]string{{"c", "deploying"}, {"d", "-"}, {"b", "<deleted>"}}
	if fmt.Sprint(got.rows) != fmt.Sprint(want) || got.items["c"] != 3 || got.items["a"] != nil {
		t.Errorf("rows %v items %v, want rows %v", got.rows, got.items, want)
	}
}

// get -o wide --watch prints changed rows in the header's columns; a cell
// wider than its column widens it and prints the header again.
func TestWatchRowsAlignWithHeader(t *testing.T) {
	g := &getter{kind: "Machine", format: "wide"}
	first := &table{header: []string{"NAME", "PHASE", "REASON", "IP"},
		rows: [][]string{{"vm-1", "ready", "-", "192.0.2.11"}, {"vm-2", "ready", "-", "192.0.2.12"}}}
	var b bytes.Buffer
	if err := g.print(&b, first, true); err != nil {
		t.Fatal(err)
	}
	next := &table{header: first.header, rows: [][]string{{"vm-1", "deploying", "-", "192.0.2.11"}, {"vm-2", "ready", "-", "192.0.2.12"}}}
	g.print(&b, changedRows(first.byName(), next), false)
	// vm-2's reason is longer than any cell so far: the header comes again.
	last := &table{header: first.header, rows: [][]string{{"vm-1", "deploying", "-", "192.0.2.11"},
		{"vm-2", "failed", "DeployTimedOut", "192.0.2.12"}}}
	g.print(&b, changedRows(next.byName(), last), false)
	g.print(&b, changedRows(last.byName(), &table{header: first.header, rows: last.rows[:1]}), false)
	checkGolden(t, "get-watch.golden", b.String())

	// Every row's columns start where its header's do.
	var header []int
	for _, line := range strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n") {
		starts := columnStarts(line)
		if strings.HasPrefix(line, "NAME") {
			header = starts
			continue
		}
		if fmt.Sprint(starts) != fmt.Sprint(header) {
			t.Errorf("row %q: columns at %v, header's at %v", line, starts, header)
		}
	}
}

// columnStarts is where each space-separated cell of a line begins.
func columnStarts(line string) []int {
	var s []int
	for i := range line {
		if line[i] != ' ' && (i == 0 || line[i-1] == ' ') {
			s = append(s, i)
		}
	}
	return s
}
