//go:build e2e

package e2e

import (
	"context"
	"flag"
	"fmt"
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

func TestLabCommissionBIOSAndUEFI(t *testing.T) {
	netlab.Require(t)
	netlab.RequireBinary(t, "qemu-system-x86_64", "git")
	lab := netlab.NewVMLab(t, netlab.VMLabConfig{
		KilnBin: kilnBin,
		VMs: []netlab.VMSpec{
			{Name: "vm-bios", MAC: "52:54:00:77:00:01", Firmware: netlab.BIOS, BMC: netlab.IPMI,
				Memory: 1024, CPUs: 2, DiskSize: 3 << 30, Serial: "KILN-LAB-0001", NICROM: true},
			{Name: "vm-uefi", MAC: "52:54:00:77:00:02", Firmware: netlab.UEFI, BMC: netlab.RedfishTLS,
				Memory: 768, CPUs: 1, DiskSize: 2 << 30, Serial: "KILN-LAB-0002"},
		},
	})
	// One VM at a time: two cores, TCG.
	for _, vm := range lab.VMs {
		commissionInLab(t, lab, vm)
	}
	m, err := lab.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	series := fmt.Sprintf(`kiln_machines{phase="ready",rack="%s"}`, lab.Config.Rack)
	if got := netlab.MetricValue(m, series); got != strconv.Itoa(len(lab.VMs)) {
		t.Errorf("%s = %q, want %d\n%s", series, got, len(lab.VMs), grep(m, "kiln_machines{"))
	}
}

// commissionInLab enrolls one VM (a commit) and follows it new →
// commissioning → ready, then checks what the machine agent found and
// that the VM is off.
func commissionInLab(t *testing.T, lab *netlab.VMLab, vm *netlab.LabVM) {
	t.Helper()
	lab.Enroll(vm.Name)
	lab.MustWaitPhase(vm.Name, "commissioning", 2*time.Minute)
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
		st.PhaseStartedAt.Sub(ons[0]).Round(time.Second), len(ons))

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

	// Off at the end: the vBMC says so, and so does Kiln's own driver
	// through it from the lab's namespace.
	var state netlab.VBMCState
	deadline := time.Now().Add(2 * time.Minute)
	for {
		state, err = lab.VBMCState(vm.Name)
		if err == nil && state.PowerState == "Off" || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	if err != nil || state.PowerState != "Off" {
		t.Errorf("%s is ready but its vBMC says %+v (%v)", vm.Name, state, err)
	}
	if out, err := lab.Kiln("power", "status", vm.Name); err != nil || strings.TrimSpace(out) != "off" {
		t.Errorf("kiln power status %s: %q %v", vm.Name, out, err)
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

	say("building the lab (ephemeral image, git repository, kiln server, two rack agents, vBMCs)…")
	lab := netlab.NewVMLab(t, netlab.VMLabConfig{
		KilnBin: kilnBin,
		Dir:     filepath.Join(*demoDir, "lab"),
		VMs: []netlab.VMSpec{
			{Name: "vm-1", MAC: "52:54:00:77:00:01", Firmware: netlab.BIOS, BMC: netlab.IPMI, Memory: 1024, CPUs: 1, Serial: "KILN-DEMO-1", NICROM: true},
			{Name: "vm-2", MAC: "52:54:00:77:00:02", Firmware: netlab.UEFI, BMC: netlab.RedfishTLS, Memory: 1024, CPUs: 1, Serial: "KILN-DEMO-2"},
		},
	})
	ns := lab.NS.Name
	say("lab up in network namespace %s (bridge %s, gateway %s, subnet %s)", ns, lab.Bridge, lab.Gateway, lab.Config.Subnet)
	say("watch it from another shell:")
	say("  ip netns exec %s %s get machines --watch --etcd-endpoints %s", ns, kilnBin, lab.EtcdEndpoints())
	say("  ip netns exec %s %s describe machine vm-1", ns, kilnBin)
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
		say("enrolling %s (a commit in the inventory)…", vm.Name)
		lab.Enroll(vm.Name)
		took, err := lab.WaitPhase(vm.Name, "ready", labPhaseTimeout)
		if err != nil {
			say("%s: %v", vm.Name, err)
		} else {
			say("%s is ready after %s", vm.Name, took.Round(time.Second))
		}
		lines := strings.Split(strings.TrimSpace(lab.Console(vm.Name)), "\n")
		say("the end of %s's console:\n%s", vm.Name, strings.Join(lines[max(0, len(lines)-8):], "\n"))
		if ctx.Err() != nil {
			return
		}
	}
	fmt.Println(lab.MustKiln("get", "machines", "-o", "wide"))
	say("running until Ctrl-C (or make demo-down)")
	<-ctx.Done()
	say("tearing the lab down…")
}
