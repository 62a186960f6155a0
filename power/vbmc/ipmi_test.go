package vbmc_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/bougou/go-ipmi/pkg/client"
	"github.com/bougou/go-ipmi/pkg/command/chassis"
	"github.com/bougou/go-ipmi/pkg/types"
	"github.com/kilnhq/kiln/power/vbmc"
	"github.com/kilnhq/kiln/power/vbmc/vbmctest"
)

func TestIPMIToolPower(t *testing.T) {
	needTool(t, "ipmitool")
	m := vbmc.NewMemory()
	b := vbmctest.Start(t, m)

	if out := mustIPMI(t, b, "chassis", "power", "status"); !strings.Contains(out, "Chassis Power is off") {
		t.Fatalf("status of a new machine: %q", out)
	}
	mustIPMI(t, b, "chassis", "power", "on")
	waitState(t, m, vbmc.On, time.Second)
	if out := mustIPMI(t, b, "chassis", "power", "status"); !strings.Contains(out, "Chassis Power is on") {
		t.Fatalf("status after power on: %q", out)
	}
	if out := mustIPMI(t, b, "chassis", "status"); !strings.Contains(out, "System Power         : on") {
		t.Errorf("chassis status after power on: %q", out)
	}

	mustIPMI(t, b, "chassis", "power", "cycle")
	if s := m.Stats(); s.Starts != 2 || s.HardOffs != 1 {
		t.Errorf("after a power cycle: %+v, want 2 starts and 1 hard off", s)
	}
	mustIPMI(t, b, "chassis", "power", "reset")
	if s := m.Stats(); s.Resets != 1 {
		t.Errorf("after a reset: %+v, want 1 reset", s)
	}

	mustIPMI(t, b, "chassis", "power", "soft") // graceful: the memory machine goes off at once
	waitState(t, m, vbmc.Off, time.Second)
	if s := m.Stats(); s.GracefulOffs != 1 {
		t.Errorf("after soft: %+v, want a graceful shutdown", s)
	}

	// Power cycle and reset of a machine that is off: D5h, as IPMI 2.0 §28.3 recommends.
	out, err := ipmitool(t, b, "lanplus", "", "chassis", "power", "cycle")
	if err == nil || !strings.Contains(out, "not supported in present state") {
		t.Errorf("power cycle while off: %v %q, want the D5h completion code", err, out)
	}

	mustIPMI(t, b, "chassis", "power", "on")
	mustIPMI(t, b, "chassis", "power", "off") // hard
	waitState(t, m, vbmc.Off, time.Second)
	if out := mustIPMI(t, b, "chassis", "power", "status"); !strings.Contains(out, "Chassis Power is off") {
		t.Fatalf("status after power off: %q", out)
	}
	if s := m.Stats(); s.HardOffs != 2 {
		t.Errorf("after power off: %+v, want 2 hard offs", s)
	}
}

func TestIPMIToolBootDevice(t *testing.T) {
	needTool(t, "ipmitool")
	m := vbmc.NewMemory()
	b := vbmctest.Start(t, m)

	mustIPMI(t, b, "chassis", "bootdev", "pxe", "options=efiboot")
	if got, want := b.Boot(), (vbmc.Boot{Enabled: vbmc.BootOnce, Target: vbmc.TargetPxe, UEFI: true}); got != want {
		t.Fatalf("boot after bootdev pxe options=efiboot: %+v, want %+v", got, want)
	}
	out := mustIPMI(t, b, "chassis", "bootparam", "get", "5")
	for _, want := range []string{"Boot Flag Valid", "Options apply to only next boot", "BIOS EFI boot", "Force PXE"} {
		if !strings.Contains(out, want) {
			t.Errorf("bootparam get 5 lacks %q:\n%s", want, out)
		}
	}

	// The next start uses the override, once.
	mustIPMI(t, b, "chassis", "power", "on")
	if s := m.Stats(); !s.LastBoot.Network() || !s.LastBoot.UEFI {
		t.Errorf("the machine started with %v, want a UEFI network boot", s.LastBoot)
	}
	if got := b.Boot(); got.Enabled != vbmc.BootDisabled {
		t.Errorf("a one-time override stays after use: %+v", got)
	}
	out = mustIPMI(t, b, "chassis", "bootparam", "get", "5")
	if strings.Contains(out, "Boot Flag Valid") {
		t.Errorf("bootparam get 5 after the boot still valid:\n%s", out)
	}

	mustIPMI(t, b, "chassis", "bootdev", "disk", "options=persistent")
	if got, want := b.Boot(), (vbmc.Boot{Enabled: vbmc.BootContinuous, Target: vbmc.TargetHdd}); got != want {
		t.Fatalf("boot after bootdev disk options=persistent: %+v, want %+v", got, want)
	}
	out = mustIPMI(t, b, "chassis", "bootparam", "get", "5")
	for _, want := range []string{"Options apply to all future boots", "Force Boot from default Hard-Drive", "BIOS PC Compatible (legacy) boot"} {
		if !strings.Contains(out, want) {
			t.Errorf("bootparam get 5 lacks %q:\n%s", want, out)
		}
	}
	mustIPMI(t, b, "chassis", "power", "cycle")
	mustIPMI(t, b, "chassis", "power", "cycle")
	if got := b.Boot(); got.Enabled != vbmc.BootContinuous {
		t.Errorf("a persistent override went away: %+v", got)
	}
	if s := m.Stats(); s.LastBoot.Target != vbmc.TargetHdd || s.Starts != 3 {
		t.Errorf("after two cycles: %+v", s)
	}

	// A device the virtual BMC can't boot from is refused (ipmitool says
	// so but exits 0).
	if out, _ := ipmitool(t, b, "lanplus", "", "chassis", "bootdev", "floppy"); !strings.Contains(out, "Invalid data field in request") {
		t.Errorf("bootdev floppy accepted: %s", out)
	}
	if got := b.Boot(); got.Target != vbmc.TargetHdd {
		t.Errorf("boot after a refused bootdev: %+v", got)
	}
}

func TestIPMIToolWrongPassword(t *testing.T) {
	needTool(t, "ipmitool")
	m := vbmc.NewMemory()
	b := vbmctest.Start(t, m)
	for _, iface := range []string{"lanplus", "lan"} {
		out, err := ipmitool(t, b, iface, "not-the-password", "chassis", "power", "on")
		if err == nil {
			t.Errorf("%s: a wrong password was accepted:\n%s", iface, out)
		}
	}
	if st, _ := m.State(context.Background()); st != vbmc.Off {
		t.Errorf("the machine is %s after refused commands", st)
	}
}

func TestIPMIToolIPMI15(t *testing.T) {
	needTool(t, "ipmitool")
	m := vbmc.NewMemory()
	b := vbmctest.Start(t, m)
	out, err := ipmitool(t, b, "lan", "", "chassis", "power", "on")
	if err != nil {
		t.Fatalf("IPMI 1.5 power on: %v\n%s", err, out)
	}
	waitState(t, m, vbmc.On, time.Second)
	if out, err := ipmitool(t, b, "lan", "", "chassis", "power", "status"); err != nil || !strings.Contains(out, "is on") {
		t.Errorf("IPMI 1.5 status: %v %q", err, out)
	}

	b15 := vbmctest.Start(t, nil, func(c *vbmc.Config) { c.DisableIPMI15 = true })
	if out, err := ipmitool(t, b15, "lan", "", "-N", "1", "-R", "1", "chassis", "power", "status"); err == nil {
		t.Errorf("IPMI 1.5 served although disabled: %s", out)
	}
	mustIPMI(t, b15, "chassis", "power", "status")
}

// goIPMI is a go-ipmi client session, as Kiln's IPMI driver opens one.
func goIPMI(t *testing.T, b *vbmc.BMC, timeout time.Duration) *client.Client {
	t.Helper()
	host, port := splitHostPort(t, b.IPMIAddr())
	c, err := client.NewClient(host, port, vbmctest.Username, vbmctest.Password)
	if err != nil {
		t.Fatal(err)
	}
	c = c.WithInterface(client.InterfaceLanplus).WithTimeout(timeout).WithRetry(0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatalf("go-ipmi connect: %v", err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func TestIPMIGoClient(t *testing.T) {
	m := vbmc.NewMemory()
	b := vbmctest.Start(t, m)
	c := goIPMI(t, b, 2*time.Second)
	ctx := context.Background()

	if err := c.SetBootDevice(ctx, types.BootDeviceSelectorForcePXE, types.BIOSBootTypeLegacy, false); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ChassisControl(ctx, chassis.ChassisControlPowerUp); err != nil {
		t.Fatal(err)
	}
	st, err := c.GetChassisStatus(ctx)
	if err != nil || !st.PowerIsOn {
		t.Fatalf("status after power up: %+v, %v", st, err)
	}
	if lb := m.Stats().LastBoot; !lb.Network() || lb.Enabled != vbmc.BootOnce {
		t.Errorf("started with %v, want a one-time network boot", lb)
	}
	if _, err := c.ChassisControl(ctx, chassis.ChassisControlSoftShutdown); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, vbmc.Off, time.Second)
}
