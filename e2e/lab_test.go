//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kilnhq/kiln/e2e/netlab"
)

// The virtual lab (netlab.VMLab): real `kiln server` on a git repository,
// two `kiln rack` agents, one `kiln vbmc` per QEMU VM (TCG). Nothing here
// writes a status: machines move only because the region, the rack, the
// vBMC and the machine agent in the VM do their parts.

// Generous: TCG firmware and a 7 MiB initramfs over HTTP take about a
// minute on an idle machine, and the e2e suite may share its two cores.
const labPhaseTimeout = 10 * time.Minute

// TestLabLifecycle takes a BIOS VM behind an IPMI vBMC and a UEFI VM
// behind a Redfish (TLS) vBMC through the whole lifecycle with a real
// Debian image: new → commissioning → ready (facts checked against the
// VM), ready → deployed (the VM boots Debian from its own disk, cloud-init
// sets the hostname and the static address from Kiln's network-config and
// runs the user-data, the OS reports in), deployed → released with a
// quick erase → ready and off (the UEFI VM network-boots again although
// its disk holds a bootable OS).
//
// The failure drills run during those phases rather than on VMs of their
// own: three kiln servers on a three-member etcd cluster; a bad commit
// (invalid YAML, then a duplicate MAC) rejected whole; the rack leader
// killed while the UEFI VM's machine agent works; the region leader
// killed while the BIOS VM's disk is written; an etcd member killed while
// the UEFI VM's disk is written; all of etcd stopped for 30 s while the
// rack keeps answering known machines; a vBMC failing and slow while the
// BIOS VM is released. Every power action happens exactly once.
func TestLabLifecycle(t *testing.T) {
	netlab.Require(t)
	netlab.RequireBinary(t, "qemu-system-x86_64", "git")
	debian, sum := netlab.DebianImage(t)
	lab := netlab.NewVMLab(t, netlab.VMLabConfig{
		KilnBin: kilnBin,
		VMs: []netlab.VMSpec{
			{Name: "vm-bios", MAC: "52:54:00:77:00:01", Firmware: netlab.BIOS, BMC: netlab.IPMI,
				Memory: 1024, CPUs: 2, DiskSize: 3 << 30, Serial: "KILN-LAB-0001", NICROM: true},
			{Name: "vm-uefi", MAC: "52:54:00:77:00:02", Firmware: netlab.UEFI, BMC: netlab.RedfishTLS,
				Memory: 768, CPUs: 1, DiskSize: 2 << 30, Serial: "KILN-LAB-0002"},
		},
		Images:       []netlab.OSImage{{Name: "debian-12", Path: debian, SHA256: sum}},
		ExternalEtcd: true,
		EtcdMembers:  3,
		Servers:      3,
		ServerArgs:   []string{"--os-report-timeout", "10m"},
		AgentArgs:    []string{"kiln.lldp=5s"}, // no switch sends LLDP here (TestLabFleet's do)
	})
	bios, uefi := lab.VM("vm-bios"), lab.VM("vm-uefi")
	// A known machine without a VM (in maintenance: never powered), whose
	// reservation the rack must keep answering while etcd is away.
	lab.Apply("a spare machine", map[string]string{netlab.MachineFile("spare"): spareMachine})

	badCommits(t, lab)

	// One VM at a time: two cores, TCG. vm-bios arrives unknown: powered
	// on by hand, it is discovered, and its exported Machine is committed.
	discoverInLab(t, lab, bios)
	commissionInLab(t, lab, bios, nil)
	commissionInLab(t, lab, uefi, func() { killRackLeader(t, lab, uefi) })
	m, err := lab.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	series := fmt.Sprintf(`kiln_machines{phase="ready",rack="%s"}`, lab.Config.Rack)
	if got := netlab.MetricValue(m, series); got != strconv.Itoa(len(lab.VMs)) {
		t.Errorf("%s = %q, want %d\n%s", series, got, len(lab.VMs), grep(m, "kiln_machines{"))
	}

	deployInLab(t, lab, bios, func() {
		leader, err := lab.RegionLeader(-1, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		lab.Servers[leader].Kill9()
		next, err := lab.RegionLeader(leader, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("drill: kill -9 of region leader region-%d while %s's disk is written: region-%d leads %s later",
			leader, bios.Name, next, time.Since(start).Round(10*time.Millisecond))
	})
	deployInLab(t, lab, uefi, func() {
		lab.Etcd[2].Kill9()
		t.Logf("drill: kill -9 of etcd member etcd-2 while %s's disk is written", uefi.Name)
	})

	etcdOutage(t, lab)

	// A slow BMC that fails twice: the release's power actions are
	// retried and succeed, and the rack's metrics count the failures.
	if err := lab.SetFaults(bios.Name, `{"failNext": 2, "latency": "300ms", "ipmiCompletionCode": 192, "protocol": "ipmi"}`); err != nil {
		t.Fatal(err)
	}
	releaseInLab(t, lab, bios)
	var errs float64
	for i := range lab.Racks {
		if m, err := lab.RackMetrics(i); err == nil {
			errs += netlab.SumMetric(m, "kiln_power_operations_total", `driver="ipmi"`, `result="error"`)
		}
	}
	if errs < 2 {
		t.Errorf("the rack agents counted %v failed IPMI operations, want the vBMC's 2 injected failures", errs)
	}
	if log := lab.Racks[0].Log() + lab.Racks[1].Log(); !strings.Contains(log, "power operation failed; retrying") {
		t.Errorf("no rack agent logged a retried power operation")
	}
	releaseInLab(t, lab, uefi)

	// Each power action exactly once, across every kill: (discovery,)
	// commission, deploy (network, then disk) and erase each started QEMU
	// once.
	for vm, want := range map[*netlab.LabVM]int{bios: 5, uefi: 4} {
		if ons := lab.PowerOns(vm.Name); len(ons) != want {
			t.Errorf("%s: QEMU started %d times, want %d ((discovery,) commission, deploy, disk boot, erase):\n%s", vm.Name, len(ons), want, vm.VBMC.Log())
		}
	}
	// No address given twice.
	out := lab.MustKiln("get", "leases")
	for _, vm := range lab.VMs {
		if n := strings.Count(out, vm.IP.String()+" "); n != 1 {
			t.Errorf("address %s appears %d times in the leases:\n%s", vm.IP, n, out)
		}
	}
}

// discoverInLab powers an unknown VM on by hand (ipmitool, as someone
// racking a server would), waits until Kiln has discovered it and its
// agent reported the hardware, and commits the Machine that
// `kiln export discovered` prints, with a name, an address and the BMC
// filled in.
func discoverInLab(t *testing.T, lab *netlab.VMLab, vm *netlab.LabVM) {
	t.Helper()
	netlab.RequireBinary(t, "ipmitool")
	for _, args := range [][]string{{"chassis", "bootdev", "pxe"}, {"chassis", "power", "on"}} {
		if _, err := lab.IPMITool(vm.Name, args...); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	mac := strings.ReplaceAll(vm.MAC, ":", "")
	out, err := lab.WaitKiln(labPhaseTimeout, func(out string) bool {
		return strings.Contains(out, "node-"+mac) && strings.Contains(out, "serial "+vm.Serial)
	}, "export", "discovered")
	if err != nil {
		t.Fatalf("%s was not discovered with its hardware: %v\ndiscovered: %s\nconsole:\n%s", vm.Name, err,
			lab.MustKiln("get", "discovered"), tailLines(lab.Console(vm.Name), 30))
	}
	t.Logf("%s: powered on by hand → discovered with its facts in %s", vm.Name, time.Since(start).Round(time.Second))
	waitVBMCOff(t, lab, vm) // not a Machine yet: kiln power does not know it
	if !strings.Contains(lab.MustKiln("get", "discovered"), vm.MAC) {
		t.Errorf("kiln get discovered does not list %s", vm.MAC)
	}
	// The operator names it, gives it its address and its BMC.
	doc := out[strings.Index(out, "apiVersion"):]
	doc = strings.Replace(doc, "name: node-"+mac+" # name it", "name: "+vm.Name, 1)
	doc = strings.Replace(doc, ", subnet: "+netlab.SubnetName+"}", ", subnet: "+netlab.SubnetName+", ip: "+vm.IP.String()+"}", 1)
	full := lab.MachineYAML(vm, netlab.MachineOpts{State: "ready"})
	doc = strings.Replace(doc, "  bmc: {driver: manual} # set the BMC\n", full[strings.Index(full, "  bmc:\n"):], 1)
	if !strings.Contains(doc, "name: "+vm.Name) || !strings.Contains(doc, "ip: "+vm.IP.String()) || strings.Contains(doc, "driver: manual") {
		t.Fatalf("kiln export discovered printed an unexpected document:\n%s", out)
	}
	lab.Apply("add "+vm.Name+" from kiln export discovered", map[string]string{netlab.MachineFile(vm.Name): doc})
}

const spareMachine = `apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata: {name: spare}
spec:
  interfaces:
    - {name: eno1, mac: "52:54:00:77:00:09", subnet: lab-net, ip: 192.168.77.19}
  bmc: {driver: manual}
  maintenance: true
`

// badCommits commits invalid YAML, then a duplicate MAC: each is rejected
// whole, the last good revision stays applied, and kiln get source and
// the metric say why; removing them applies again.
func badCommits(t *testing.T, lab *netlab.VMLab) {
	t.Helper()
	good, err := lab.Sync("", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, file, doc, want string }{
		{"invalid YAML", "machines/broken.yaml", "apiVersion: kiln.dev/v1alpha1\nkind: Machine\nmetadata: {name: broken\n", "broken.yaml"},
		{"a duplicate MAC", "machines/twin.yaml", strings.ReplaceAll(strings.ReplaceAll(spareMachine, "name: spare", "name: twin"), "192.168.77.19", "192.168.77.29"), "52:54:00:77:00:09"},
	} {
		rev, err := lab.Commit("bad: "+c.name, map[string]string{c.file: c.doc})
		if err != nil {
			t.Fatal(err)
		}
		st, err := lab.Sync(rev, 2*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if st.AppliedRevision != good.AppliedRevision || st.State == "Applied" || st.Errors == 0 {
			t.Errorf("%s: source %+v, want it rejected with %s still applied", c.name, st, good.AppliedRevision)
		}
		out := lab.MustKiln("get", "source", "default", "-o", "json")
		if !strings.Contains(out, c.want) {
			t.Errorf("%s: kiln get source does not say where (%q):\n%s", c.name, c.want, out)
		}
		m, err := lab.Metrics()
		if err != nil {
			t.Fatal(err)
		}
		if v := netlab.SumMetric(m, "kiln_source_last_apply_success"); v != 0 {
			t.Errorf("%s: kiln_source_last_apply_success = %v, want 0", c.name, v)
		}
		rev = lab.Apply("revert: "+c.name, map[string]string{c.file: ""})
		if good, err = lab.Sync(rev, time.Minute); err != nil || good.AppliedRevision != rev {
			t.Fatalf("the revert of %s was not applied: %+v %v", c.name, good, err)
		}
	}
	rev, err := lab.Commit("nothing", map[string]string{"README": "the lab's inventory\n"})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := lab.Sync(rev, 2*time.Minute); err != nil || st.AppliedRevision != rev {
		t.Fatalf("a good commit after the bad ones: %+v %v", st, err)
	}
	if _, err := lab.Kiln("get", "machines", "broken"); err == nil {
		t.Errorf("a machine of a rejected commit is in the desired state")
	}
}

// killRackLeader kills the rack leader once the VM's machine agent has
// its task (the VM booted from the leader's DHCP, TFTP and HTTP): the
// standby takes over and the agent reports to it.
func killRackLeader(t *testing.T, lab *netlab.VMLab, vm *netlab.LabVM) {
	t.Helper()
	if _, err := lab.WaitConsole(vm.Name, `kiln-agent: task commission`, labPhaseTimeout); err != nil {
		t.Fatal(err)
	}
	old := lab.Leader(time.Minute)
	start := time.Now()
	old.Kill9()
	next, err := lab.WaitLeader(old, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("drill: kill -9 of rack leader %s while %s's agent works: %s leads %s later",
		old.Name, vm.Name, next.Name, time.Since(start).Round(10*time.Millisecond))
}

// etcdOutage stops every etcd member for 30 s: the rack keeps answering a
// known machine's DHCP from memory, and once etcd is back the region and
// the racks go on (the releases that follow need them) with nothing lost.
func etcdOutage(t *testing.T, lab *netlab.VMLab) {
	t.Helper()
	before := map[string]string{}
	for _, vm := range lab.VMs {
		p, _ := lab.Phase(vm.Name)
		before[vm.Name] = p
	}
	cli := lab.NewNS("cli")
	lab.Veth(cli, "eth0", lab.NS, "vcli")
	lab.NS.Attach("vcli", lab.Bridge)
	cli.Up("eth0")
	lab.NS.Up("vcli")
	probe, err := netlab.NewProbe(cli, "eth0", netlab.ProbeOpts{MAC: "52:54:00:77:00:09", Wait: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()

	var stopped []*netlab.Proc
	for _, m := range lab.Etcd {
		if !m.Exited() {
			if err := m.Signal(syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			stopped = append(stopped, m)
		}
	}
	start := time.Now()
	resume := func() {
		for _, m := range stopped {
			m.Signal(syscall.SIGCONT)
		}
	}
	defer resume()
	// The OFFER comes from memory; the ACK of a static reservation comes
	// once the lease's save has timed out (10 s): it can only ever be
	// that machine's (docs/dhcp.md).
	offers, err := probe.Discover()
	if err != nil || len(offers) == 0 {
		t.Fatalf("with etcd stopped, no OFFER for the known machine: %v", err)
	}
	probe.Opts.Wait = 15 * time.Second
	ack, _, err := probe.Request(offers[0])
	if err != nil || ack == nil || ack.TypeName() != "ACK" || ack.YIAddr.String() != "192.168.77.19" {
		t.Errorf("with etcd stopped, the rack did not give the known machine its reservation: ack %v, %v", ack, err)
	} else {
		t.Logf("drill: with etcd stopped, the known machine's REQUEST was ACKed after %s", ack.After.Round(100*time.Millisecond))
	}
	time.Sleep(30*time.Second - time.Since(start)) // the drill is an outage of 30 s, not a wait for an event
	resume()
	t.Logf("drill: every etcd member stopped for %s", time.Since(start).Round(time.Second))
	if _, err := lab.RegionLeader(-1, 2*time.Minute); err != nil {
		t.Fatalf("no region leader after etcd came back: %v", err)
	}
	for _, vm := range lab.VMs {
		if p, _ := lab.Phase(vm.Name); p != before[vm.Name] {
			t.Errorf("%s: phase %q after the outage, %q before", vm.Name, p, before[vm.Name])
		}
	}
}

// deployInLab commits state: deployed with the Debian image and user-data
// that leaves a marker on the console, and follows the VM to deployed.
func deployInLab(t *testing.T, lab *netlab.VMLab, vm *netlab.LabVM, whileWriting func()) {
	t.Helper()
	marker := "KILN-USERDATA-" + strings.ToUpper(vm.Name)
	userData := "#cloud-config\nruncmd:\n  - [sh, -c, 'echo " + marker + " $(hostname) | tee /dev/ttyS0']\n"
	start := time.Now()
	lab.Apply("deploy "+vm.Name, map[string]string{netlab.MachineFile(vm.Name): lab.MachineYAML(vm,
		netlab.MachineOpts{State: "deployed", Image: "debian-12", UserData: userData})})
	lab.MustWaitPhase(vm.Name, "deploying", 2*time.Minute)
	if whileWriting != nil {
		if _, err := lab.WaitConsole(vm.Name, `kiln-agent: deploying`, labPhaseTimeout); err != nil {
			t.Fatal(err)
		}
		whileWriting()
	}
	lab.MustWaitPhase(vm.Name, "deployed", 2*labPhaseTimeout)
	t.Logf("%s (%s): ready → deployed in %s, the OS's boot included", vm.Name, vm.Firmware, time.Since(start).Round(time.Second))

	// The OS said so, from the address Kiln's network-config gave it.
	st, err := lab.Status(vm.Name)
	if err != nil {
		t.Fatal(err)
	}
	if r := st.OSReport; r == nil || r.Hostname != vm.Name || r.Address != vm.IP.String() {
		t.Errorf("%s: OS report %+v, want hostname %s from %s", vm.Name, st.OSReport, vm.Name, vm.IP)
	}
	if c := st.Condition("Deployed"); c == nil || c.Status != "True" || c.Reason != "OSReported" {
		t.Errorf("%s: Deployed condition %+v", vm.Name, c)
	}
	console := lab.Console(vm.Name)
	for _, want := range []string{marker + " " + vm.Name, vm.Name + " login:"} {
		if !strings.Contains(console, want) {
			t.Errorf("%s: the console of the deployed OS lacks %q:\n%s", vm.Name, want, tailLines(console, 40))
		}
	}
	if !strings.Contains(console, "Debian GNU/Linux 12") {
		t.Errorf("%s: the console shows no Debian boot:\n%s", vm.Name, tailLines(console, 40))
	}
	// The boot timeline is written in batches by the rack: wait for it.
	out, err := lab.WaitKiln(time.Minute, func(out string) bool {
		return strings.Contains(out, "os-report")
	}, "describe", "machine", vm.Name)
	if err != nil {
		t.Errorf("kiln describe machine %s: no os-report in the boot timeline: %v", vm.Name, err)
	}
	for _, want := range []string{"OS reported in", "hostname " + vm.Name} {
		if !strings.Contains(out, want) {
			t.Errorf("kiln describe machine %s lacks %q:\n%s", vm.Name, want, out)
		}
	}
}

// releaseInLab commits state: ready with a quick erase and follows the VM
// back to ready, powered off, its disk's first MiB zeroed.
func releaseInLab(t *testing.T, lab *netlab.VMLab, vm *netlab.LabVM) {
	t.Helper()
	start := time.Now()
	lab.Apply("release "+vm.Name, map[string]string{netlab.MachineFile(vm.Name): lab.MachineYAML(vm,
		netlab.MachineOpts{State: "ready", Image: "debian-12", Erase: "quick"})})
	lab.MustWaitPhase(vm.Name, "erasing", labPhaseTimeout)
	lab.MustWaitPhase(vm.Name, "ready", labPhaseTimeout)
	t.Logf("%s (%s): deployed → released, erased and ready in %s", vm.Name, vm.Firmware, time.Since(start).Round(time.Second))
	// The erase boot was a network boot into the agent, not the disk.
	if c := lab.Console(vm.Name); !strings.Contains(c, "kiln-agent") {
		t.Errorf("%s: the erase boot's console shows no machine agent:\n%s", vm.Name, tailLines(c, 40))
	}
	waitOff(t, lab, vm)
	f, err := os.Open(vm.Disk)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	head := make([]byte, 1<<20)
	if _, err := io.ReadFull(f, head); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(head, make([]byte, len(head))) {
		t.Errorf("%s: the disk's first MiB is not zero after a quick erase", vm.Name)
	}
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// commissionInLab enrolls one VM (a commit) and follows it new →
// commissioning → ready, then checks what the machine agent found and
// that the VM is off.
func commissionInLab(t *testing.T, lab *netlab.VMLab, vm *netlab.LabVM, during func()) {
	t.Helper()
	if _, err := lab.Kiln("get", "machines", vm.Name); err != nil {
		lab.Enroll(vm.Name) // not added from discovery
	}
	lab.MustWaitPhase(vm.Name, "commissioning", 2*time.Minute)
	if during != nil {
		during()
	}
	lab.MustWaitPhase(vm.Name, "ready", labPhaseTimeout)
	ons := lab.PowerOns(vm.Name)
	if len(ons) == 0 {
		t.Fatalf("%s is ready but its vBMC never started QEMU:\n%s", vm.Name, vm.VBMC.Log())
	}
	// Ready time from the (first) power-on, as the region's status says.
	st, err := lab.Status(vm.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s (%s, %s): power-on → ready in %s (QEMU started %d time(s))", vm.Name, vm.Firmware, vm.BMC,
		st.PhaseStartedAt.Sub(ons[len(ons)-1]).Round(time.Second), len(ons))

	out := lab.MustKiln("describe", "machine", vm.Name)
	for _, want := range []string{"Phase:", "ready", "dhcp-acked", "Agent result", "success"} {
		if !strings.Contains(out, want) {
			t.Errorf("kiln describe machine %s lacks %q:\n%s", vm.Name, want, out)
		}
	}
	f, err := lab.Facts(vm.Name)
	if err != nil {
		t.Fatal(err)
	}
	if f.CPU.Count != vm.CPUs {
		t.Errorf("CPUs: %d, want %d", f.CPU.Count, vm.CPUs)
	}
	if mib := int(f.Memory.TotalBytes >> 20); mib > vm.Memory || mib < vm.Memory*9/10 {
		t.Errorf("memory: %d MiB, want %d MiB less at most 10%%", mib, vm.Memory)
	}
	if len(f.Disks) != 1 || f.Disks[0].SizeBytes != vm.DiskSize {
		t.Errorf("disks: %+v, want one of %d bytes", f.Disks, vm.DiskSize)
	}
	if len(f.NICs) != 1 || !strings.EqualFold(f.NICs[0].MAC, vm.MAC) {
		t.Errorf("NICs: %+v, want one with %s", f.NICs, vm.MAC)
	}
	if f.DMI.Serial != vm.Serial {
		t.Errorf("DMI serial %q, want %q (-smbios type=1,serial=)", f.DMI.Serial, vm.Serial)
	}
	t.Logf("facts of %s: %d CPUs, MemTotal %d MiB, disks %+v, NICs %+v, DMI %+v", vm.Name, f.CPU.Count,
		f.Memory.TotalBytes>>20, f.Disks, f.NICs, f.DMI)

	waitOff(t, lab, vm)
	if !strings.Contains(out, vm.Serial) {
		t.Errorf("kiln describe machine %s does not show the facts (serial %s):\n%s", vm.Name, vm.Serial, out)
	}
}

// waitOff waits until the VM is off: the vBMC says so, and so does Kiln's
// own driver through it from the lab's namespace.
func waitOff(t *testing.T, lab *netlab.VMLab, vm *netlab.LabVM) {
	t.Helper()
	waitVBMCOff(t, lab, vm)
	if out, err := lab.Kiln("power", "status", vm.Name); err != nil || strings.TrimSpace(out) != "off" {
		t.Errorf("kiln power status %s: %q %v", vm.Name, out, err)
	}
}

// waitVBMCOff waits until the VM's vBMC says it is off.
func waitVBMCOff(t *testing.T, lab *netlab.VMLab, vm *netlab.LabVM) {
	t.Helper()
	var state netlab.VBMCState
	var err error
	deadline := time.Now().Add(2 * time.Minute)
	for {
		state, err = lab.VBMCState(vm.Name)
		if err == nil && state.PowerState == "Off" || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	if err != nil || state.PowerState != "Off" {
		t.Errorf("%s: its vBMC says %+v (%v), want Off", vm.Name, state, err)
	}
}

var demoDir = flag.String("demo", "", "TestDemo: run the demo lab with its files in this folder until Ctrl-C (make demo)")

// TestDemo is `make demo`: a small lab whose machines are walked to
// ready, then kept running until Ctrl-C (or SIGTERM from make demo-down),
// torn down whatever happens. Skipped without -demo.
func TestDemo(t *testing.T) {
	if *demoDir == "" {
		t.Skip("the demo lab runs with -demo DIR (make demo)")
	}
	netlab.Require(t)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := os.MkdirAll(*demoDir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(*demoDir, "pid"), []byte(strconv.Itoa(os.Getpid())+"\n"))
	say := func(format string, args ...any) { fmt.Printf("kiln-demo: "+format+"\n", args...) }
	go func() {
		<-ctx.Done()
		say("interrupted: the lab is torn down once the current step ends (Ctrl-C again quits at once; make demo-down removes what is left)")
		again := make(chan os.Signal, 1)
		signal.Notify(again, os.Interrupt, syscall.SIGTERM)
		<-again
		os.Exit(130)
	}()

	say("building the Debian image the machines get (once per machine: about 3 minutes; cached in %s)…", netlab.OSImageCache)
	debian, sum := netlab.DebianImage(t)
	say("building the lab (ephemeral image, git repository, kiln server, two rack agents, vBMCs)…")
	lab := netlab.NewVMLab(t, netlab.VMLabConfig{
		KilnBin: kilnBin,
		Dir:     filepath.Join(*demoDir, "lab"),
		VMs: []netlab.VMSpec{
			{Name: "vm-1", MAC: "52:54:00:77:00:01", Firmware: netlab.BIOS, BMC: netlab.IPMI, Memory: 1024, CPUs: 1, Serial: "KILN-DEMO-1", NICROM: true},
			{Name: "vm-2", MAC: "52:54:00:77:00:02", Firmware: netlab.UEFI, BMC: netlab.RedfishTLS, Memory: 1024, CPUs: 1, Serial: "KILN-DEMO-2"},
		},
		Images:    []netlab.OSImage{{Name: "debian-12", Path: debian, SHA256: sum}},
		AgentArgs: []string{"kiln.lldp=5s"}, // no switch sends LLDP in the demo
	})
	ns := lab.NS.Name
	say("lab up in network namespace %s (bridge %s, gateway %s, subnet %s)", ns, lab.Bridge, lab.Gateway, lab.Config.Subnet)
	say("watch it from another shell:")
	say("  export KILN_ETCD_ENDPOINTS=%s", lab.EtcdEndpoints())
	say("  ip netns exec %s %s get machines --watch", ns, kilnBin)
	say("  ip netns exec %s %s describe machine vm-1", ns, kilnBin)
	say("  ip netns exec %s %s events --watch", ns, kilnBin)
	say("  ip netns exec %s curl -s %s | grep '^kiln_machines'", ns, lab.MetricsURL(0))
	for _, vm := range lab.VMs {
		say("  tail -f %s    # console of %s (%s, %s at %s)", vm.SerialLog(), vm.Name, vm.Firmware, vm.BMC, vm.BMCAddr)
	}
	say("  inventory (git): %s", lab.Repo)
	if ctx.Err() != nil {
		return
	}

	// One machine at a time: two cores, TCG.
	for _, vm := range lab.VMs {
		say("enrolling %s: a commit adds its Machine to the inventory; Kiln powers it on and commissions it…", vm.Name)
		lab.Enroll(vm.Name)
		took, err := lab.WaitPhase(vm.Name, "ready", labPhaseTimeout)
		if err != nil {
			say("%s: %v", vm.Name, err)
			continue
		}
		say("%s is ready (commissioned and off) after %s", vm.Name, took.Round(time.Second))
		if ctx.Err() != nil {
			return
		}
		say("deploying Debian 12 to %s: a commit sets state: deployed…", vm.Name)
		lab.Apply("deploy "+vm.Name, map[string]string{netlab.MachineFile(vm.Name): lab.MachineYAML(vm,
			netlab.MachineOpts{State: "deployed", Image: "debian-12", UserData: "#cloud-config\nruncmd:\n  - [sh, -c, 'echo hello from $(hostname) | tee /dev/ttyS0']\n"})})
		took, err = lab.WaitPhase(vm.Name, "deployed", 2*labPhaseTimeout)
		if err != nil {
			say("%s: %v", vm.Name, err)
			continue
		}
		say("%s is deployed after %s: Debian booted from its disk and reported in", vm.Name, took.Round(time.Second))
		for _, re := range []string{`Debian GNU/Linux 12 ` + vm.Name, vm.Name + ` login:`, `hello from ` + vm.Name} {
			if line, err := lab.WaitConsole(vm.Name, re, time.Minute); err == nil {
				say("  %s's console: %s", vm.Name, strings.TrimSpace(line))
			}
		}
		if ctx.Err() != nil {
			return
		}
	}
	fmt.Println(lab.MustKiln("get", "machines", "-o", "wide"))
	say("running until Ctrl-C (or make demo-down)")
	<-ctx.Done()
	say("tearing the lab down…")
}
