//go:build e2e

package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/e2e/netlab"
	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/reconciler"
)

// TestLabFleet proves issue 14's fleet lifecycle on a lab of its own:
// three small BIOS VMs behind IPMI vBMCs, one region server, one rack
// agent polling power every 10 s, and a tiny OS image (netlab.BuildTinyOS:
// it prints a boot id and its uptime, never writes its disk, and is
// deployed with confirm: none) instead of Debian. In one flow:
//
//  1. adopt: vm-c, its disk written by hand and started by hand, is
//     committed with adopt: true → deployed, Adopted, with no power action
//     from Kiln (the same boot keeps running, its disk unchanged);
//  2. cabling and fast track: each of vm-a and vm-b sees its own switch
//     port (LLDP into its own tap); vm-b's declared port is wrong →
//     CablingMismatch on vm-b only. vm-a is committed deployed (fast
//     track: one boot into the agent, then its disk), vm-b ready then
//     deployed (the normal path): both power-on → deployed times logged;
//  3. rollout: a Profile with rollout {maxUnavailable: 1} moves the three
//     from tiny-1 to tiny-2, never two down at once (vBMC logs and
//     phases);
//  4. drift: vm-c switched off behind Kiln's back → PowerDrift within a
//     poll; with powerDrift: correct, Kiln powers it back on.
func TestLabFleet(t *testing.T) {
	netlab.Require(t)
	netlab.RequireBinary(t, "qemu-system-x86_64", "git", "ipmitool")
	begin := time.Now()
	dir := t.TempDir()
	f := &fleet{t: t, tiny1: netlab.BuildTinyOS(t, dir, "tiny-1"), tiny2: netlab.BuildTinyOS(t, dir, "tiny-2"), grace: defaultDriftGrace}
	var vms []netlab.VMSpec
	for i, n := range []string{"vm-a", "vm-b", "vm-c"} {
		vms = append(vms, netlab.VMSpec{Name: n, MAC: fmt.Sprintf("52:54:00:78:00:%02d", i+1), Firmware: netlab.BIOS,
			BMC: netlab.IPMI, Memory: 512, CPUs: 1, DiskSize: 64 << 20, Serial: fmt.Sprintf("KILN-FLEET-%d", i+1), NICROM: true})
	}
	// Drift is judged fleetDriftGrace after Kiln's own power actions (the
	// default is longer): vm-c may have been redeployed just before.
	serverArgs := netlab.KnownFlags(t, kilnBin, "server", "--power-drift-grace", fleetDriftGrace.String())
	if len(serverArgs) > 0 {
		f.grace = fleetDriftGrace
	}
	f.lab = netlab.NewVMLab(t, netlab.VMLabConfig{
		KilnBin:    kilnBin,
		VMs:        vms,
		Images:     []netlab.OSImage{f.tiny1, f.tiny2},
		RackAgents: 1,
		RackArgs:   []string{"--power-poll-interval", fleetPoll.String()},
		ServerArgs: serverArgs,
	})
	t.Logf("fleet lab up in %s", time.Since(begin).Round(time.Second))
	f.rack = fleetSwitches

	step := func(name string, run func()) {
		start := time.Now()
		run()
		t.Logf("%s: %s", name, time.Since(start).Round(time.Second))
	}
	step("adopt", f.adopt)
	step("cabling and fast track", f.cablingAndFastTrack)
	step("rollout", f.rollout)
	step("power drift", f.drift)
	t.Logf("TestLabFleet took %s", time.Since(begin).Round(time.Second))
}

// fleetPoll is the rack's power poll interval (jittered ±20%);
// fleetDriftGrace the region's grace after its own power actions, when
// the server has the flag, defaultDriftGrace otherwise.
const (
	fleetPoll         = 10 * time.Second
	fleetDriftGrace   = 20 * time.Second
	defaultDriftGrace = 2 * time.Minute
)

// The lab's top-of-rack switch. vm-a is declared where it is cabled;
// vm-b is declared on Ethernet1/12 but cabled to (its LLDP says)
// Ethernet1/2.
const (
	torMAC             = "02:5a:00:00:00:01"
	switchLLDPInterval = 30 * time.Second // a switch's default
	fleetSwitches      = `  switches:
    - name: tor-1
      chassisID: "` + torMAC + `"
      ports:
        - {name: Ethernet1/1, machine: vm-a, interface: eno1}
        - {name: Ethernet1/12, machine: vm-b, interface: eno1}
`
)

type fleet struct {
	t            *testing.T
	lab          *netlab.VMLab
	tiny1, tiny2 netlab.OSImage
	rack         string        // the Rack's spec lines
	grace        time.Duration // the region's power drift grace
}

// vbmcOps are the vBMC actions that a power or boot request from a
// client causes.
var vbmcOps = []string{"power on", "power off", "reset", "power cycle: off", "boot override", "graceful restart: shutting down"}

// adopt starts vm-c by hand on the tiny OS and has Kiln adopt it.
func (f *fleet) adopt() {
	t, lab := f.t, f.lab
	c := lab.VM("vm-c")
	if err := lab.WriteDisk(c.Name, f.tiny1.Path); err != nil {
		t.Fatal(err)
	}
	on := time.Now()
	for _, args := range [][]string{{"chassis", "bootdev", "disk"}, {"chassis", "power", "on"}} {
		if _, err := lab.IPMITool(c.Name, args...); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := lab.WaitConsole(c.Name, netlab.TinyOSUptime, labPhaseTimeout); err != nil {
		t.Fatalf("vm-c started by hand does not run the tiny OS: %v\nvBMC:\n%s", err, c.VBMC.Log())
	}
	t.Logf("vm-c: powered on by hand (ipmitool, boot from disk) → the tiny OS runs in %s", time.Since(on).Round(100*time.Millisecond))
	before := netlab.TinyBoots(lab.Console(c.Name))
	disk := diskSum(t, c)
	mark := c.VBMC.Mark()
	start := time.Now()
	lab.Apply("adopt vm-c", map[string]string{netlab.MachineFile(c.Name): lab.MachineYAML(c,
		netlab.MachineOpts{State: "deployed", Image: f.tiny1.Name, Adopt: true})})
	lab.MustWaitPhase(c.Name, "deployed", 2*time.Minute)
	t.Logf("vm-c: adopted (commit → deployed) in %s", time.Since(start).Round(time.Second))
	if cond, err := lab.WaitCondition(c.Name, reconciler.CondAdopted, "True", time.Minute); err != nil {
		t.Error(err)
	} else {
		t.Logf("vm-c: %s %s %s %q", cond.Type, cond.Status, cond.Reason, cond.Message)
	}
	if _, err := lab.WaitEvent(c.Name, reconciler.CondAdopted, time.Minute); err != nil {
		t.Error(err)
	}
	// Kiln reads its power through the BMC from then on: on.
	f.waitObserved(c.Name, "on")
	// The same boot goes on (the console is the current QEMU's): its
	// uptime grows by two prints at least.
	last := before[len(before)-1]
	_, err := waitTiny(lab, c.Name, 2*time.Minute, func(b []netlab.TinyBoot) bool {
		return len(b) == len(before) && b[len(b)-1].ID == last.ID && b[len(b)-1].Uptime >= last.Uptime+6
	})
	if err != nil {
		t.Errorf("vm-c after adoption: %v", err)
	}
	f.noPowerOps(c, mark, "since its adoption was committed")
	if now := diskSum(t, c); now != disk {
		t.Errorf("vm-c's disk changed with its adoption: sha256 %s, was %s", now, disk)
	}
}

// noPowerOps fails the test if the VM's vBMC did anything asked of it
// since mark.
func (f *fleet) noPowerOps(vm *netlab.LabVM, mark int, since string) {
	f.t.Helper()
	for _, a := range f.lab.VBMCActions(vm.Name, mark) {
		if slices.Contains(vbmcOps, a.What) || a.What == "QEMU started" {
			f.t.Errorf("%s: its vBMC did %q %s:\n%s", vm.Name, a.What, since, a.Line)
		}
	}
}

// waitObserved waits until the rack's power watch records the state.
func (f *fleet) waitObserved(machine, state string) inventory.PowerObservation {
	f.t.Helper()
	deadline := time.Now().Add(3 * fleetPoll)
	for {
		o, err := f.lab.PowerObservation(machine)
		if err == nil && o.State == state {
			return o
		}
		if time.Now().After(deadline) {
			f.t.Errorf("%s: the rack's power watch recorded %+v (%v), want %s within %s", machine, o, err, state, 3*fleetPoll)
			return o
		}
		time.Sleep(time.Second)
	}
}

// waitTiny waits until the tiny OS's boots on the VM's console satisfy
// ok, and returns them.
func waitTiny(lab *netlab.VMLab, vm string, timeout time.Duration, ok func([]netlab.TinyBoot) bool) ([]netlab.TinyBoot, error) {
	deadline := time.Now().Add(timeout)
	for {
		b := netlab.TinyBoots(lab.Console(vm))
		if ok(b) {
			return b, nil
		}
		if time.Now().After(deadline) {
			return b, fmt.Errorf("the tiny OS's boots on %s's console: %+v after %s; console:\n%s", vm, b, timeout, tailLines(lab.Console(vm), 15))
		}
		time.Sleep(time.Second)
	}
}

func diskSum(t *testing.T, vm *netlab.LabVM) string {
	t.Helper()
	s, err := netlab.FileSHA256(vm.Disk)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// cablingAndFastTrack commissions vm-a (state deployed: fast track) and
// vm-b (ready, then deployed) at once, each seeing its own switch port.
func (f *fleet) cablingAndFastTrack() {
	t, lab := f.t, f.lab
	a, b := lab.VM("vm-a"), lab.VM("vm-b")
	// A switch's default: a frame every 30 s (the first goes out now,
	// before the VMs boot); the agent listens 31 s from its start.
	lab.NS.SendLLDP(a.Tap, netlab.LLDPPort{ChassisMAC: torMAC, SystemName: "tor-1", Port: "Ethernet1/1", PortDesc: "to vm-a"}, switchLLDPInterval)
	lab.NS.SendLLDP(b.Tap, netlab.LLDPPort{ChassisMAC: torMAC, SystemName: "tor-1", Port: "Ethernet1/2", PortDesc: "to vm-b"}, switchLLDPInterval)
	markA, markB := a.VBMC.Mark(), b.VBMC.Mark()
	lab.Apply("vm-a (deployed) and vm-b (ready), cabled to tor-1", map[string]string{
		"rack.yaml":                lab.RackYAMLWith(f.rack),
		netlab.MachineFile(a.Name): lab.MachineYAML(a, netlab.MachineOpts{State: "deployed", Image: f.tiny1.Name}),
		netlab.MachineFile(b.Name): lab.MachineYAML(b, netlab.MachineOpts{State: "ready"}),
	})
	lab.MustWaitPhase(b.Name, "ready", labPhaseTimeout)
	readyB := f.phaseStarted(b.Name)
	lab.Apply("deploy vm-b", map[string]string{netlab.MachineFile(b.Name): lab.MachineYAML(b,
		netlab.MachineOpts{State: "deployed", Image: f.tiny1.Name})})
	lab.MustWaitPhase(a.Name, "deployed", labPhaseTimeout)
	lab.MustWaitPhase(b.Name, "deployed", labPhaseTimeout)

	f.checkLLDP(a, "Ethernet1/1")
	f.checkLLDP(b, "Ethernet1/2")
	f.checkCabling(a, b)
	onsA, onsB := lab.VBMCActions(a.Name, markA), lab.VBMCActions(b.Name, markB)
	// Fast track: one network boot, then the disk; the normal path: a
	// network boot to commission, another to deploy, then the disk.
	ftook := f.deployedAfter(a.Name, onsA, 0)
	commission := readyB.Sub(netBoots(onsB)[0].At)
	deploy := f.deployedAfter(b.Name, onsB, 1)
	t.Logf("power-on → deployed: fast track (vm-a) %s; normal path (vm-b) %s = commission %s + deploy %s; fast track saves %s",
		ftook.Round(time.Second), (commission + deploy).Round(time.Second), commission.Round(time.Second),
		deploy.Round(time.Second), (commission + deploy - ftook).Round(time.Second))
	if n := len(netBoots(onsA)); n != 1 {
		t.Errorf("vm-a (fast track) network-booted %d times, want 1:\n%s", n, actionLines(onsA))
	}
	if n := count(onsA, "QEMU started"); n != 2 {
		t.Errorf("vm-a (fast track) was started %d times, want 2 (network boot, disk boot):\n%s", n, actionLines(onsA))
	}
	if n := len(netBoots(onsB)); n != 2 {
		t.Errorf("vm-b (normal path) network-booted %d times, want 2 (commission, deploy):\n%s", n, actionLines(onsB))
	}
	if _, err := lab.WaitEvent(a.Name, "FastTrack", time.Minute); err != nil {
		t.Error(err)
	}
	for _, vm := range []*netlab.LabVM{a, b} {
		if _, err := waitTiny(lab, vm.Name, 2*time.Minute, func(bt []netlab.TinyBoot) bool {
			return len(bt) == 1 && bt[0].Label == f.tiny1.Name && bt[0].Uptime > 0
		}); err != nil {
			t.Errorf("%s deployed does not run %s: %v", vm.Name, f.tiny1.Name, err)
		}
	}
}

// phaseStarted is when the machine entered its current phase.
func (f *fleet) phaseStarted(machine string) time.Time {
	f.t.Helper()
	st, err := f.lab.Status(machine)
	if err != nil {
		f.t.Fatal(err)
	}
	return st.PhaseStartedAt
}

// deployedAfter is how long after its n-th network boot (0-based) the
// machine became deployed.
func (f *fleet) deployedAfter(machine string, acts []netlab.VBMCAction, n int) time.Duration {
	f.t.Helper()
	boots := netBoots(acts)
	if len(boots) <= n {
		f.t.Fatalf("%s: %d network boots, want at least %d:\n%s", machine, len(boots), n+1, actionLines(acts))
	}
	return f.phaseStarted(machine).Sub(boots[n].At)
}

// netBoots are the QEMU starts that did not boot the disk first.
func netBoots(acts []netlab.VBMCAction) []netlab.VBMCAction {
	var out []netlab.VBMCAction
	for _, a := range acts {
		if a.What == "QEMU started" && !a.DiskBoot() {
			out = append(out, a)
		}
	}
	return out
}

func count(acts []netlab.VBMCAction, what string) int {
	n := 0
	for _, a := range acts {
		if a.What == what {
			n++
		}
	}
	return n
}

func actionLines(acts []netlab.VBMCAction) string {
	var b strings.Builder
	for _, a := range acts {
		b.WriteString(a.Line + "\n")
	}
	return b.String()
}

// checkLLDP checks that the machine agent reported the VM's own switch
// port (works on main today: the agent reports LLDP neighbours).
func (f *fleet) checkLLDP(vm *netlab.LabVM, port string) {
	f.t.Helper()
	facts, err := f.lab.Facts(vm.Name)
	if err != nil {
		f.t.Error(err)
		return
	}
	for _, n := range facts.LLDP {
		if n.ChassisID == torMAC && n.PortID == port && n.PortIDType == "interface-name" && strings.EqualFold(n.MAC, vm.MAC) {
			f.t.Logf("%s: LLDP neighbour %s port %s (%s) on %s", vm.Name, n.SystemName, n.PortID, n.PortDescription, n.Interface)
			return
		}
	}
	f.t.Errorf("%s: LLDP neighbours %+v, want tor-1 (%s) port %s on %s", vm.Name, facts.LLDP, torMAC, port, vm.MAC)
}

// checkCabling: vm-b's declared port does not match what it sees, vm-a's
// does.
func (f *fleet) checkCabling(a, b *netlab.LabVM) {
	t, lab := f.t, f.lab
	cond, err := lab.WaitCondition(b.Name, reconciler.CondCablingMismatch, "True", time.Minute)
	if err != nil {
		t.Error(err)
	} else {
		t.Logf("vm-b: %s %s %s %q", cond.Type, cond.Status, cond.Reason, cond.Message)
		for _, want := range []string{"Ethernet1/12", "Ethernet1/2"} {
			if !strings.Contains(cond.Message, want) {
				t.Errorf("vm-b's CablingMismatch does not name %s: %q", want, cond.Message)
			}
		}
	}
	if _, err := lab.WaitEvent(b.Name, reconciler.CondCablingMismatch, time.Minute); err != nil {
		t.Error(err)
	}
	if st, err := lab.Status(a.Name); err != nil {
		t.Error(err)
	} else if c := st.Condition(reconciler.CondCablingMismatch); c != nil && c.Status == "True" {
		t.Errorf("vm-a is cabled as declared but has %+v", c)
	}
	out := lab.MustKiln("get", "machines", "-o", "wide")
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && (f[0] == a.Name || f[0] == b.Name) && (f[0] == b.Name) != strings.Contains(line, "mismatch") {
			t.Errorf("kiln get machines -o wide should show a mismatch for vm-b only:\n%s", out)
		}
	}
}

const fleetProfile = `apiVersion: kiln.dev/v1alpha1
kind: Profile
metadata: {name: fleet}
spec:
  selector: {matchLabels: {lab: vmlab}}
  rollout: {maxUnavailable: 1}
  machine:
    image: %s
`

// rollout puts the three deployed VMs under a Profile with a rollout,
// then changes its image: they are redeployed one at a time.
func (f *fleet) rollout() {
	t, lab := f.t, f.lab
	files := map[string]string{"profiles/fleet.yaml": fmt.Sprintf(fleetProfile, f.tiny1.Name)}
	for _, vm := range lab.VMs {
		files[netlab.MachineFile(vm.Name)] = lab.MachineYAML(vm, netlab.MachineOpts{State: "deployed", Adopt: vm.Name == "vm-c"})
	}
	marks := map[string]int{}
	for _, vm := range lab.VMs {
		marks[vm.Name] = vm.VBMC.Mark()
	}
	// The same image through the profile: nothing to redeploy (the
	// vBMC logs below would show a second network boot).
	lab.Apply("the fleet profile, image "+f.tiny1.Name, files)
	start := time.Now()
	lab.Apply("roll the fleet to "+f.tiny2.Name, map[string]string{"profiles/fleet.yaml": fmt.Sprintf(fleetProfile, f.tiny2.Name)})
	obs, ok := f.watchRollout(start)
	if !ok {
		return
	}
	t.Logf("rollout of 3 machines to %s: %s; at most %d not deployed at once (phases), RolloutWaiting seen on %v",
		f.tiny2.Name, time.Since(start).Round(time.Second), obs.maxDown, obs.waiting)
	if obs.maxDown > 1 {
		t.Errorf("rollout: %d machines not deployed at once (maxUnavailable 1): %v", obs.maxDown, obs.worst)
	}
	if len(obs.waiting) == 0 {
		t.Errorf("rollout: no machine showed %s while waiting its turn", reconciler.CondRolloutWaiting)
	}
	f.checkRolloutLogs(marks)
}

type rolloutObs struct {
	maxDown int
	worst   map[string]string // the phases when maxDown was seen
	waiting []string          // machines seen with RolloutWaiting True
}

// watchRollout samples every machine's phase each second until all three
// run tiny-2 and are deployed again. It fails the test (ok false) when no
// machine starts redeploying within 2 minutes.
func (f *fleet) watchRollout(start time.Time) (obs rolloutObs, ok bool) {
	t, lab := f.t, f.lab
	left := map[string]bool{}
	deadline := start.Add(time.Duration(len(lab.VMs)) * labPhaseTimeout / 2)
	for {
		sts, err := lab.Statuses()
		down := map[string]string{}
		for name, st := range sts {
			if st.Phase != "deployed" {
				down[name], left[name] = st.Phase, true
			}
			if c := st.Condition(reconciler.CondRolloutWaiting); c != nil && c.Status == "True" && !slices.Contains(obs.waiting, name) {
				obs.waiting = append(obs.waiting, name)
			}
		}
		if err == nil && len(down) > obs.maxDown {
			obs.maxDown, obs.worst = len(down), down
		}
		done := err == nil && len(down) == 0
		for _, vm := range lab.VMs {
			b := netlab.TinyBoots(lab.Console(vm.Name))
			done = done && len(b) > 0 && b[len(b)-1].Label == f.tiny2.Name
		}
		switch {
		case done:
			return obs, true
		case len(left) == 0 && time.Since(start) > 2*time.Minute:
			out, _ := lab.Kiln("get", "machines", "-o", "wide")
			t.Errorf("rollout: no machine left deployed within 2 minutes of the profile's new image:\n%s", out)
			return obs, false
		case time.Now().After(deadline):
			out, _ := lab.Kiln("get", "machines", "-o", "wide")
			t.Errorf("rollout: not every machine runs %s after %s (%v):\n%s", f.tiny2.Name, time.Since(start).Round(time.Second), err, out)
			return obs, false
		}
		time.Sleep(time.Second)
	}
}

// checkRolloutLogs checks, from the vBMC logs since the marks, that each
// VM was redeployed once (one network boot, then its disk) and that no two
// were down at once: each one's first action to its disk boot.
func (f *fleet) checkRolloutLogs(marks map[string]int) {
	t, lab := f.t, f.lab
	var outs []netlab.Outage
	for _, vm := range lab.VMs {
		acts := lab.VBMCActions(vm.Name, marks[vm.Name])
		o, ok := netlab.RedeployOutage(vm.Name, acts)
		if !ok || o.NetBoots != 1 {
			t.Errorf("rollout: %s network-booted %d times (want 1), disk boot seen: %v:\n%s", vm.Name, o.NetBoots, ok, actionLines(acts))
			continue
		}
		outs = append(outs, o)
	}
	if a, b, found := netlab.Overlap(outs); found {
		t.Errorf("rollout: %s went down at %s, before %s was back (%s): two down at once", b.VM,
			b.From.Format(time.StampMilli), a.VM, a.To.Format(time.StampMilli))
	}
	var order []string
	for _, o := range outs {
		order = append(order, fmt.Sprintf("%s %s→%s", o.VM, o.From.Format("15:04:05.0"), o.To.Format("15:04:05.0")))
	}
	t.Logf("rollout order, down → disk boot (vBMC logs): %s", strings.Join(order, ", "))
}

// drift switches vm-c off behind Kiln's back: the rack sees it within a
// poll, the region raises PowerDrift and, reporting only, does nothing
// else; switched on again by hand, the condition clears. Then, with the
// rack's powerDrift: correct, a second power-off is undone by Kiln.
func (f *fleet) drift() {
	t, lab := f.t, f.lab
	c := lab.VM("vm-c")
	mark := c.VBMC.Mark()
	f.powerOffByHand(c)
	if _, err := lab.WaitEvent(c.Name, reconciler.CondPowerDrift, time.Minute); err != nil {
		t.Error(err)
	}
	if p, _ := lab.Phase(c.Name); p != "deployed" {
		t.Errorf("vm-c: phase %s after drift, want deployed (report only)", p)
	}
	start := time.Now()
	if _, err := lab.IPMITool(c.Name, "chassis", "power", "on"); err != nil {
		t.Fatal(err)
	}
	if _, err := lab.WaitCondition(c.Name, reconciler.CondPowerDrift, "absent", 3*fleetPoll); err != nil {
		t.Error(err)
	}
	t.Logf("vm-c switched on again by hand: PowerDrift cleared %s later", time.Since(start).Round(100*time.Millisecond))
	// Reporting only, Kiln asked nothing of the vBMC: ours are the one
	// power off and the one power on.
	acts := lab.VBMCActions(c.Name, mark)
	ok := count(acts, "power off") == 1 && count(acts, "power on") == 1
	for _, a := range acts {
		ok = ok && (a.What == "power off" || a.What == "power on" || !slices.Contains(vbmcOps, a.What))
	}
	if !ok {
		t.Errorf("vm-c: with powerDrift: report, its vBMC did more than our power off and on:\n%s", actionLines(acts))
	}

	lab.Apply("powerDrift: correct", map[string]string{"rack.yaml": lab.RackYAMLWith(f.rack + "  powerDrift: correct\n")})
	mark = c.VBMC.Mark()
	drifts := len(driftEvents(lab, c.Name))
	start = time.Now()
	if _, err := lab.IPMITool(c.Name, "chassis", "power", "off"); err != nil {
		t.Fatal(err)
	}
	// The condition may be True for a moment only: the correcting power
	// task's outcome says on. The event stays.
	if _, err := c.VBMC.WaitLogFrom(mark, `QEMU started`, 3*fleetPoll+f.grace); err != nil {
		t.Errorf("vm-c: with powerDrift: correct, Kiln did not power it back on: %v", err)
		return
	}
	if evs := driftEvents(lab, c.Name); len(evs) <= drifts {
		t.Errorf("vm-c: powered back on without a new PowerDrift event: %+v", evs)
	}
	if _, err := lab.WaitCondition(c.Name, reconciler.CondPowerDrift, "absent", 3*fleetPoll+f.grace); err != nil {
		t.Error(err)
	}
	if _, err := waitTiny(lab, c.Name, 2*time.Minute, func(b []netlab.TinyBoot) bool { return len(b) > 0 && b[len(b)-1].Uptime > 0 }); err != nil {
		t.Errorf("vm-c powered back on: %v", err)
	}
	t.Logf("vm-c: powerDrift: correct → switched off by hand, powered back on and drift cleared in %s", time.Since(start).Round(time.Second))
}

// powerOffByHand switches the VM off through its vBMC and waits until the
// rack has seen it off and the region has raised PowerDrift.
func (f *fleet) powerOffByHand(vm *netlab.LabVM) {
	t, lab := f.t, f.lab
	start := time.Now()
	if _, err := lab.IPMITool(vm.Name, "chassis", "power", "off"); err != nil {
		t.Fatal(err)
	}
	o := f.waitObserved(vm.Name, "off")
	t.Logf("%s switched off by hand: the rack recorded %s %s later", vm.Name, o.State, o.ObservedAt.Sub(start).Round(100*time.Millisecond))
	cond, err := lab.WaitCondition(vm.Name, reconciler.CondPowerDrift, "True", 3*fleetPoll+f.grace)
	if err != nil {
		t.Error(err)
		return
	}
	t.Logf("%s: %s %s %s %q, %s after the power-off", vm.Name, cond.Type, cond.Status, cond.Reason, cond.Message, cond.Since.Sub(start).Round(100*time.Millisecond))
}

// driftEvents are the machine's PowerDrift events.
func driftEvents(lab *netlab.VMLab, machine string) []inventory.Event {
	evs, _ := lab.Events(machine)
	var out []inventory.Event
	for _, ev := range evs {
		if ev.Reason == reconciler.CondPowerDrift {
			out = append(out, ev)
		}
	}
	return out
}
