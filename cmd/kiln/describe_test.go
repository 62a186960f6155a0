package main

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/spec/agentapi"
)

var at = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

// goldenFacts returns the facts the collectors report on their fixture tree.
func goldenFacts(t *testing.T) json.RawMessage {
	t.Helper()
	b, err := os.ReadFile("../../agents/machine/facts/testdata/facts.golden.json")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// describeReport renders describe for a machine with a status and its
// rack's report.
func describeReport(t *testing.T, st *inventory.MachineStatus, r *inventory.MachineReport) string {
	t.Helper()
	var b bytes.Buffer
	d := description{name: "vm-2", status: st, report: r}
	if err := d.write(&b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// lines returns the output's lines with runs of spaces made one, so that
// assertions do not depend on column widths.
func lines(out string) []string {
	var ls []string
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		ls = append(ls, strings.Join(strings.Fields(l), " "))
	}
	return ls
}

func hasLine(ls []string, want string) bool {
	for _, l := range ls {
		if l == want {
			return true
		}
	}
	return false
}

func TestDescribeFacts(t *testing.T) {
	golden := goldenFacts(t)
	var f agentapi.Facts
	if err := json.Unmarshal(golden, &f); err != nil {
		t.Fatal(err)
	}
	f.LLDP = []agentapi.Neighbor{{Interface: "eno1", MAC: "3c:ec:ef:00:11:22", ChassisID: "52:54:00:ff:00:01", ChassisIDType: "mac",
		PortID: "swp2", PortIDType: "interface-name", PortDescription: "vm-2 eno1", SystemName: "lab-tor", TTLSeconds: 120}}
	withLLDP, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	common := []string{
		"Status:",
		"Phase: ready",
		"Agent result: success at 2025-01-02T03:04:05Z: commissioned: 3 disks, 2 NICs",
		"Facts:",
		"Arch: amd64",
		"CPU: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz, 3 logical CPUs in 2 sockets",
		"Memory: 1.9 GiB",
		"System: QEMU Standard PC (Q35 + ICH9, 2009), version pc-q35-8.2, serial KILN-VM-2, asset tag asset-7",
		"UUID: 6a1f9c2e-58d1-4b5e-9d1c-2f0e4a7b9c11",
		"Board: Kiln Boards K1, serial BRD-0042",
		"Firmware: SeaBIOS 1.16.3 (04/01/2014)",
		"Disks:",
		"NAME SIZE SERIAL MODEL BY-PATH ROTATIONAL",
		"nvme0n1 1.8 TiB S6B0NL0T123456X Samsung SSD 980 PRO 2TB pci-0000:00:05.0-nvme-1 false",
		"sda 465.8 GiB WD-WCAYUS123456 WDC WD5000AAKX-0 pci-0000:00:1f.2-ata-1.0 true",
		"vda 10.0 GiB KILN-VDA - pci-0000:00:04.0 true",
		"NICs:",
		"NAME MAC LINK SPEED DRIVER MTU",
		"eno1 3c:ec:ef:00:11:22 down 1 Gb/s e1000e 9000",
		"eth0 52:54:00:42:00:02 up - virtio_net 1500",
	}
	for _, c := range []struct {
		name  string
		facts json.RawMessage
		want  []string
	}{
		{"golden", golden, append(common, "LLDP neighbours: none heard")},
		{"lldp", withLLDP, append(common, "LLDP neighbours:", "INTERFACE SWITCH PORT CHASSIS",
			"eno1 lab-tor swp2 (vm-2 eno1) 52:54:00:ff:00:01 (mac)")},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := describeReport(t, &inventory.MachineStatus{Phase: "ready", Facts: c.facts},
				&inventory.MachineReport{Result: &inventory.AgentResult{Success: true, Reason: "commissioned: 3 disks, 2 NICs", At: at}})
			ls := lines(out)
			for _, w := range c.want {
				if !hasLine(ls, w) {
					t.Errorf("no line %q in\n%s", w, out)
				}
			}
			// The disk table's columns line up: SIZE starts where the sizes do.
			raw := strings.Split(out, "\n")
			for i, l := range raw {
				if strings.Contains(l, "SERIAL") && i+1 < len(raw) {
					if h, r := strings.Index(l, "SIZE"), strings.Index(raw[i+1], "1.8 TiB"); h != r || h < 0 {
						t.Errorf("SIZE at column %d, the first size at %d:\n%s", h, r, out)
					}
				}
			}
		})
	}
}

func TestDescribeAgentResult(t *testing.T) {
	for _, c := range []struct {
		name string
		res  inventory.AgentResult
		want string
	}{
		{"success-with-message", inventory.AgentResult{Success: true, Reason: "deployed debian-12 to /dev/sda", At: at},
			"Agent result: success at 2025-01-02T03:04:05Z: deployed debian-12 to /dev/sda"},
		{"success-bare", inventory.AgentResult{Success: true, At: at}, "Agent result: success at 2025-01-02T03:04:05Z"},
		{"failure", inventory.AgentResult{Reason: "no disk matches rootDisk serial=X", At: at},
			"Agent result: failure at 2025-01-02T03:04:05Z: no disk matches rootDisk serial=X"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := describeReport(t, &inventory.MachineStatus{Phase: "ready", BootTaskID: "T"}, &inventory.MachineReport{TaskID: "T", Result: &c.res})
			if !hasLine(lines(out), c.want) {
				t.Errorf("no line %q in\n%s", c.want, out)
			}
		})
	}
}

// Facts that do not decode take one line; the rest of describe stays.
func TestDescribeFactsThatDoNotDecode(t *testing.T) {
	for _, c := range []struct {
		name  string
		facts string
		want  string
	}{
		{"none", "", "Facts: none reported yet"},
		{"null", "null", "Facts: none reported yet"},
		{"wrong-type", `{"cpu": "many", "disks": [{"name": "sda"}]}`, "Facts: 43 bytes the agent reported do not decode"},
		{"not-an-object", `[1, 2]`, "Facts: 6 bytes the agent reported do not decode"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := describeReport(t, &inventory.MachineStatus{Phase: "commissioning", Facts: json.RawMessage(c.facts)},
				&inventory.MachineReport{Result: &inventory.AgentResult{Success: true, At: at}})
			var got []string
			for _, l := range lines(out) {
				if strings.HasPrefix(l, "Facts") {
					got = append(got, l)
				}
			}
			if len(got) != 1 || !strings.HasPrefix(got[0], c.want) {
				t.Errorf("want one line starting %q, got %q in\n%s", c.want, got, out)
			}
			if strings.Contains(out, "Disks") || !strings.Contains(out, "Agent result:") || !strings.Contains(out, "Phase:") {
				t.Errorf("the rest of describe should stand:\n%s", out)
			}
		})
	}
}

// A machine's strings cannot move the cursor, set the title or fake a line.
func TestDescribeHostileFacts(t *testing.T) {
	var f agentapi.Facts
	if err := json.Unmarshal(goldenFacts(t), &f); err != nil {
		t.Fatal(err)
	}
	render := func(serial, model, nic, reason string) string {
		g := f
		g.Disks = append([]agentapi.Disk(nil), f.Disks...)
		g.NICs = append([]agentapi.NIC(nil), f.NICs...)
		g.Disks[0].Serial, g.Disks[1].Model, g.NICs[0].Name = serial, model, nic
		g.LLDP = []agentapi.Neighbor{{Interface: "eno1", SystemName: nic, PortID: reason}}
		raw, err := json.Marshal(g)
		if err != nil {
			t.Fatal(err)
		}
		return describeReport(t, &inventory.MachineStatus{Phase: "ready", Facts: raw, Reason: reason,
			Conditions: []inventory.Condition{{Type: "Commissioned", Status: "False", Message: reason, Since: at}}},
			&inventory.MachineReport{TaskID: reason, Result: &inventory.AgentResult{Success: false, Reason: reason, At: at}})
	}
	benign := render("S1", "M1", "eno1", "disk gone")
	hostile := render("X\x1b[2J\nFAKE: ok", "M\tpadded\vx\fy", "eno1\r\x1b]0;pwned\x07", "bad\u202eevil\xff\x00\n  Phase: deployed")

	for _, bad := range []string{"\x1b", "\r", "\x07", "\x00", "\v", "\f", "\u202e", "\xff"} {
		if strings.Contains(hostile, bad) {
			t.Errorf("output holds raw %q:\n%s", bad, hostile)
		}
	}
	if got, want := strings.Count(hostile, "\n"), strings.Count(benign, "\n"); got != want {
		t.Errorf("hostile strings made %d lines, benign ones %d:\n%s", got, want, hostile)
	}
	for _, l := range lines(hostile) {
		if strings.HasPrefix(l, "FAKE") || l == "Phase: deployed" {
			t.Errorf("a faked line %q in\n%s", l, hostile)
		}
	}
	for _, want := range []string{`X\x1b[2J\nFAKE: ok`, `M\tpadded\vx\fy`, `eno1\r\x1b]0;pwned\a`, `bad\u202eevil\xff\x00\n  Phase: deployed`} {
		if !strings.Contains(hostile, want) {
			t.Errorf("want %s shown escaped in\n%s", want, hostile)
		}
	}
}

func TestClean(t *testing.T) {
	for in, want := range map[string]string{
		"":                          "",
		"Samsung SSD 980 PRO 2TB":   "Samsung SSD 980 PRO 2TB",
		"Müller Ω 日本":               "Müller Ω 日本",
		"a\x1b[31mred":              `a\x1b[31mred`,
		"line\r\nnext":              `line\r\nnext`,
		"col\tumn":                  `col\tumn`,
		"\u202eevil":                `\u202eevil`,
		"bad\xffutf8":               `bad\xffutf8`,
		"\u00a0nbsp":                `\u00a0nbsp`,
		"replacement \uFFFD stays":  "replacement \uFFFD stays",
		"osc \x1b]8;;http://x\x07z": `osc \x1b]8;;http://x\az`,
	} {
		if got := clean(in); got != want {
			t.Errorf("clean(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestHumanSize(t *testing.T) {
	for n, want := range map[int64]string{
		0: "-", 512: "512 B", 1536: "1.5 KiB", 2062475264: "1.9 GiB", 10 << 30: "10.0 GiB",
		500107862016: "465.8 GiB", 2000398934016: "1.8 TiB",
	} {
		if got := humanSize(n); got != want {
			t.Errorf("humanSize(%d) = %q, want %q", n, got, want)
		}
	}
}

// An adopted machine has no facts because it was never commissioned:
// describe says so rather than waiting for an agent.
func TestDescribeAdoptedFacts(t *testing.T) {
	st := &inventory.MachineStatus{Phase: "deployed", DeployedImage: "debian", DeployedAt: at}
	st.SetCondition("Adopted", "True", "Adopted", "adopted running image debian", at)
	out := describeReport(t, st, nil)
	if !strings.Contains(out, "Facts: unknown: adopted without commissioning") || strings.Contains(out, "none reported yet") {
		t.Fatalf("facts of an adopted machine:\n%s", out)
	}
}
