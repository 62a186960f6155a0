package boot_test

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"

	. "github.com/kilnhq/kiln/netboot/boot"
	"github.com/kilnhq/kiln/netboot/boot/boottest"
	"github.com/kilnhq/kiln/spec/agentapi"
	"gopkg.in/yaml.v3"
)

// TestCloudInitAccepts serves the user-data and network-config of every
// lab and datacenter machine over HTTP (with each machine's own token) and
// has the real cloud-init validate them: `cloud-init schema` for the
// user-data, and cloud-init's own network-config v2 parser and renderers
// for the network-config (testdata/validate-network-config.py; 22.4 has no
// network-config schema).
func TestCloudInitAccepts(t *testing.T) {
	t.Parallel()
	ci, err := exec.LookPath("cloud-init")
	if err != nil {
		t.Skip("cloud-init not installed (apt-get install -y cloud-init)")
	}
	python := cloudInitPython(t, ci)
	dir := t.TempDir()
	var userData, netConfigs []string
	for _, src := range []string{"../../examples/lab", "../../examples/datacenter"} {
		b := boottest.New(loadInventory(t, src), nil)
		ts := newTestServer(t, b)
		names := make([]string, 0, len(b.Inventory().Machines))
		for n := range b.Inventory().Machines {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			m := b.Inventory().Machines[n]
			b.Pending(t, n, "t", agentapi.PurposeCommission)
			_, script := curl(t, ts.URL+"/boot/"+strings.ToLower(m.Spec.BootInterface().MAC)+"/script.ipxe")
			tok := tokenOf(t, script)
			for _, file := range []string{"user-data", "network-config", "meta-data", "vendor-data"} {
				code, body := curl(t, ts.URL+"/metadata/"+n+"/"+file+"?token="+tok)
				if code != 200 {
					t.Fatalf("%s %s: %d %s", n, file, code, body)
				}
				p := filepath.Join(dir, n+"."+file)
				if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
					t.Fatal(err)
				}
				switch file {
				case "user-data":
					userData = append(userData, p)
					if m.Spec.UserData != "" && body != m.Spec.UserData {
						t.Errorf("%s user-data is not the machine's", n)
					}
					if n == "vm-1" && !strings.Contains(body, "name: ops") {
						t.Errorf("vm-1 user-data is not examples/lab/user-data/lab.yaml:\n%s", body)
					}
				case "network-config":
					netConfigs = append(netConfigs, p)
				case "meta-data":
					var md map[string]string
					if err := yaml.Unmarshal([]byte(body), &md); err != nil || md["instance-id"] == "" || md["local-hostname"] != n {
						t.Errorf("%s meta-data: %v\n%s", n, err, body)
					}
				}
			}
		}
	}
	if len(userData) < 20 {
		t.Fatalf("only %d machines checked", len(userData))
	}
	// One cloud-init process per file (it takes one), a few at a time.
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.NumCPU()+1)
	for _, p := range userData {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			out, err := exec.Command(ci, "schema", "--config-file", p).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "Valid cloud-config") {
				b, _ := os.ReadFile(p)
				t.Errorf("cloud-init schema rejects %s: %v\n%s\n%s", filepath.Base(p), err, out, b)
			}
		})
	}
	wg.Wait()
	out, err := exec.Command(python, append([]string{"testdata/validate-network-config.py"}, netConfigs...)...).CombinedOutput()
	if err != nil {
		t.Errorf("cloud-init rejects network-config: %v\n%s", err, out)
	}
	if n := strings.Count(string(out), ": valid\n"); n != len(netConfigs) {
		t.Errorf("%d of %d network-configs validated:\n%s", n, len(netConfigs), out)
	}
}

// cloudInitPython is the interpreter cloud-init runs with (its #! line),
// the one that can import the cloudinit package.
func cloudInitPython(t *testing.T, ci string) string {
	f, err := os.Open(ci)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	line, _ := bufio.NewReader(f).ReadString('\n')
	if p, ok := strings.CutPrefix(strings.TrimSpace(line), "#!"); ok && !strings.Contains(p, " ") {
		return p
	}
	return "python3"
}

func TestNetworkConfig(t *testing.T) {
	t.Parallel()
	b := boottest.New(loadInventory(t, "../../examples/datacenter"), nil)
	m, ok := b.Machine("dc1-r2-s01")
	if !ok {
		t.Fatal("no dc1-r2-s01 in examples/datacenter")
	}
	got, err := NetworkConfig(m, b.Subnet)
	if err != nil {
		t.Fatal(err)
	}
	want := `network:
    version: 2
    ethernets:
        eno1:
            match:
                macaddress: 3c:ec:ef:02:00:01
            set-name: eno1
            addresses:
                - 10.10.2.11/24
            gateway4: 10.10.2.1
            nameservers:
                addresses:
                    - 10.10.0.53
                    - 10.10.0.54
                search:
                    - dc1.example.net
        ens1f0:
            match:
                macaddress: b8:ce:f6:02:00:01
            set-name: ens1f0
            mtu: 9000
        ens1f1:
            match:
                macaddress: b8:ce:f6:02:01:01
            set-name: ens1f1
            mtu: 9000
    bonds:
        bond0:
            interfaces:
                - ens1f0
                - ens1f1
            parameters:
                mode: 802.3ad
            mtu: 9000
    vlans:
        bond0.20:
            id: 20
            link: bond0
            addresses:
                - 10.20.0.11/22
            mtu: 9000
`
	if string(got) != want {
		t.Errorf("network-config of dc1-r2-s01:\n%s\nwant:\n%s", got, want)
	}

	// ip: auto is DHCP.
	lab := boottest.New(loadInventory(t, "../../examples/lab"), nil)
	got, err = NetworkConfig(lab.Inventory().Machines["vm-2"], lab.Subnet)
	if err != nil || !strings.Contains(string(got), "dhcp4: true") || strings.Contains(string(got), "addresses") {
		t.Errorf("vm-2 (ip: auto): %v\n%s", err, got)
	}
}
