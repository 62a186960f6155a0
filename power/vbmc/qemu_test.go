package vbmc_test

import (
	"context"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kilnhq/kiln/power/vbmc"
)

func TestQEMUArgs(t *testing.T) {
	q, err := vbmc.NewQEMU(vbmc.QEMUConfig{
		Name:     "vm-7",
		Binary:   "true", // not run
		Memory:   "1G",
		Disks:    []string{"/var/lib/vm/root.qcow2", "file=/dev/vg/data,format=raw,if=virtio,cache=none"},
		NICs:     []vbmc.NIC{{Tap: "tap7", MAC: "52:54:00:42:00:07"}, {Model: "e1000"}},
		SMBIOS:   []string{"type=1,serial=vm-7"},
		Args:     []string{"-cpu", "max"},
		StateDir: t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	args := strings.Join(q.Args(vbmc.Boot{Enabled: vbmc.BootDisabled, Target: vbmc.TargetPxe}), " ")
	for _, want := range []string{
		"-name guest=vm-7", "-accel tcg", "-m 1G", "-smp 1", "-nographic",
		"-serial file:" + q.SerialLog(), "-qmp unix:" + q.QMPSocket() + ",server=on,wait=off",
		"-smbios type=1,serial=vm-7",
		"-drive file=/var/lib/vm/root.qcow2,format=qcow2,if=virtio",
		"-drive file=/dev/vg/data,format=raw,if=virtio,cache=none",
		"-netdev tap,id=net0,ifname=tap7,script=no,downscript=no -device virtio-net-pci,netdev=net0,id=net0,mac=52:54:00:42:00:07",
		"-netdev user,id=net1 -device e1000,netdev=net1,id=net1",
	} {
		if !strings.Contains(args, want) {
			t.Errorf("args lack %q:\n%s", want, args)
		}
	}
	if strings.Contains(args, "-boot") {
		t.Errorf("a disabled override adds -boot: %s", args)
	}
	if !strings.HasSuffix(args, "-cpu max") {
		t.Errorf("extra args are not last: %s", args)
	}
	for boot, want := range map[vbmc.Boot]string{
		{Enabled: vbmc.BootOnce, Target: vbmc.TargetPxe}:       "once=n",
		{Enabled: vbmc.BootContinuous, Target: vbmc.TargetPxe}: "order=n",
		{Enabled: vbmc.BootOnce, Target: vbmc.TargetHdd}:       "once=c",
		{Enabled: vbmc.BootContinuous, Target: vbmc.TargetHdd}: "order=c",
		{Enabled: vbmc.BootOnce, Target: vbmc.TargetNone}:      "",
	} {
		a := q.Args(boot)
		i := slices.Index(a, "-boot")
		got := ""
		if i >= 0 {
			got = a[i+1]
		}
		if got != want {
			t.Errorf("%v: -boot %q, want %q", boot, got, want)
		}
	}
}

// TestQEMUBootOrder: how each override reaches the firmware. SeaBIOS
// follows -boot; OVMF ignores it and follows the devices' bootindex.
func TestQEMUBootOrder(t *testing.T) {
	base := vbmc.QEMUConfig{
		Binary: "true", // not run
		Disks:  []string{"/vm/root.qcow2", "file=/vm/data.raw,format=raw,if=virtio"},
		NICs:   []vbmc.NIC{{Tap: "tap1"}, {Model: "e1000", MAC: "52:54:00:00:00:02"}},
	}
	uefi := base
	uefi.Firmware = "/usr/share/ovmf/OVMF.fd"
	noROM := uefi
	noROM.DisableNICROM = true
	explicit := base
	explicit.Firmware, explicit.FirmwareType = "/srv/fw/custom.fd", vbmc.FirmwareUEFI

	var (
		none    = vbmc.Boot{Enabled: vbmc.BootDisabled, Target: vbmc.TargetNone}
		pxeOnce = vbmc.Boot{Enabled: vbmc.BootOnce, Target: vbmc.TargetPxe, UEFI: true}
		pxeAll  = vbmc.Boot{Enabled: vbmc.BootContinuous, Target: vbmc.TargetPxe, UEFI: true}
		hddOnce = vbmc.Boot{Enabled: vbmc.BootOnce, Target: vbmc.TargetHdd, UEFI: true}
		hddAll  = vbmc.Boot{Enabled: vbmc.BootContinuous, Target: vbmc.TargetHdd}
	)
	const (
		biosDisk = "-drive file=/vm/root.qcow2,format=qcow2,if=virtio"
		biosNet0 = "-device virtio-net-pci,netdev=net0,id=net0"
		biosNet1 = "-device e1000,netdev=net1,id=net1,mac=52:54:00:00:00:02"
		fullDisk = "-drive file=/vm/data.raw,format=raw,if=virtio" // passed as given, never a bootindex
		efiDrive = "-drive file=/vm/root.qcow2,format=qcow2,if=none,id=disk0"
	)
	for name, tc := range map[string]struct {
		cfg        vbmc.QEMUConfig
		boot       vbmc.Boot
		want, lack []string
	}{
		"bios no override":    {base, none, []string{biosDisk, fullDisk, biosNet0, biosNet1}, []string{"-boot", "bootindex", "romfile"}},
		"bios network once":   {base, pxeOnce, []string{"-boot once=n", biosDisk, biosNet0}, []string{"bootindex"}},
		"bios network always": {base, pxeAll, []string{"-boot order=n"}, []string{"bootindex"}},
		"bios disk once":      {base, hddOnce, []string{"-boot once=c"}, []string{"bootindex"}},
		"bios disk always":    {base, hddAll, []string{"-boot order=c"}, []string{"bootindex"}},
		"uefi no override": {uefi, none, []string{"-bios /usr/share/ovmf/OVMF.fd", efiDrive, "-device virtio-blk-pci,drive=disk0,id=disk0 ", fullDisk, biosNet0 + " ", biosNet1},
			[]string{"-boot", "bootindex", "romfile"}},
		"uefi network once": {uefi, pxeOnce, []string{efiDrive,
			"-device virtio-net-pci,netdev=net0,id=net0,bootindex=1",
			"-device e1000,netdev=net1,id=net1,mac=52:54:00:00:00:02,bootindex=2",
			"-device virtio-blk-pci,drive=disk0,id=disk0,bootindex=3", fullDisk}, []string{"-boot", "romfile"}},
		// Once and Continuous start alike; a Once override is undone over
		// QMP once the firmware has read it (TestQEMUUEFIOnce).
		"uefi network always":                {uefi, pxeAll, []string{"net0,id=net0,bootindex=1", "net1,id=net1,mac=52:54:00:00:00:02,bootindex=2", "disk0,id=disk0,bootindex=3"}, []string{"-boot"}},
		"uefi disk once":                     {uefi, hddOnce, []string{"-device virtio-blk-pci,drive=disk0,id=disk0,bootindex=1", "net0,id=net0,bootindex=2", "net1,id=net1,mac=52:54:00:00:00:02,bootindex=3"}, []string{"-boot"}},
		"uefi disk always":                   {uefi, hddAll, []string{"disk0,id=disk0,bootindex=1", "net0,id=net0,bootindex=2"}, []string{"-boot"}},
		"uefi override of a target it lacks": {uefi, vbmc.Boot{Enabled: vbmc.BootOnce, Target: vbmc.TargetNone}, nil, []string{"-boot", "bootindex"}},
		"firmware type given":                {explicit, pxeOnce, []string{"-bios /srv/fw/custom.fd", "net0,id=net0,bootindex=1"}, []string{"-boot"}},
		"nic rom disabled": {noROM, pxeOnce, []string{
			"-device virtio-net-pci,netdev=net0,id=net0,romfile=,bootindex=1",
			"-device e1000,netdev=net1,id=net1,mac=52:54:00:00:00:02,romfile=,bootindex=2"}, []string{"-boot"}},
		"nic rom disabled, no override": {noROM, none, []string{"-device virtio-net-pci,netdev=net0,id=net0,romfile= "}, []string{"bootindex"}},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.Name, cfg.StateDir = "vm-b", t.TempDir()
			q, err := vbmc.NewQEMU(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer q.Close()
			args := strings.Join(q.Args(tc.boot), " ") + " "
			for _, w := range tc.want {
				if !strings.Contains(args, w) {
					t.Errorf("args lack %q:\n%s", w, args)
				}
			}
			for _, l := range tc.lack {
				if strings.Contains(args, l) {
					t.Errorf("args have %q:\n%s", l, args)
				}
			}
		})
	}
}

func TestQEMUConfigValidate(t *testing.T) {
	ovmf := "/usr/share/OVMF/OVMF_CODE_4M.fd"
	nics := []vbmc.NIC{{Tap: "tap1"}}
	for name, tc := range map[string]struct {
		cfg  vbmc.QEMUConfig
		want string // "" for valid
	}{
		"defaults":                {vbmc.QEMUConfig{}, ""},
		"rom off under OVMF":      {vbmc.QEMUConfig{Firmware: ovmf, NICs: nics, DisableNICROM: true}, ""},
		"rom off, type uefi":      {vbmc.QEMUConfig{FirmwareType: "uefi", NICs: nics, DisableNICROM: true}, ""},
		"rom off under SeaBIOS":   {vbmc.QEMUConfig{NICs: nics, DisableNICROM: true}, "needs UEFI firmware"},
		"rom off, OVMF said bios": {vbmc.QEMUConfig{Firmware: ovmf, FirmwareType: "bios", NICs: nics, DisableNICROM: true}, "needs UEFI firmware"},
		"rom off without nics":    {vbmc.QEMUConfig{Firmware: ovmf, DisableNICROM: true}, "needs nics"},
		"unknown firmware type":   {vbmc.QEMUConfig{FirmwareType: "efi"}, `firmwareType "efi": use bios or uefi`},
	} {
		t.Run(name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("Validate() = %v, want %q", err, tc.want)
			}
		})
	}
	for fw, want := range map[string]bool{
		"": false, "/usr/share/seabios/bios.bin": false, "/usr/share/ovmf/OVMF.fd": true,
		"/usr/share/OVMF/OVMF_CODE_4M.fd": true, "/usr/share/qemu/edk2-x86_64-code.fd": true, "/usr/share/AAVMF/AAVMF_CODE.fd": true,
	} {
		if got := (vbmc.QEMUConfig{Firmware: fw}).UEFI(); got != want {
			t.Errorf("firmware %q: UEFI() = %v, want %v", fw, got, want)
		}
	}
}

// waitFile waits until the file contains want.
func waitFile(t *testing.T, path, want string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has no %q after %v:\n%s", path, want, within, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// processGone checks that pid has exited and was reaped (no zombie).
func processGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d is still there: %s", pid, stat)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestQEMU runs real VMs (TCG, 64M, no disk) through the QEMU machine.
func TestQEMU(t *testing.T) {
	needTool(t, "qemu-system-x86_64")
	if testing.Short() {
		t.Skip("starts QEMU VMs; skipped with -short")
	}
	q, err := vbmc.NewQEMU(vbmc.QEMUConfig{Name: "qemu-test", Memory: "64M", StateDir: t.TempDir(), GracefulTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	ctx := context.Background()

	if err := q.PowerOn(ctx, vbmc.Boot{Enabled: vbmc.BootOnce, Target: vbmc.TargetPxe}); err != nil {
		t.Fatal(err)
	}
	if st, _ := q.State(ctx); st != vbmc.On {
		t.Fatalf("after power on: %s", st)
	}
	waitFile(t, q.SerialLog(), "SeaBIOS", 2*time.Minute)
	waitFile(t, q.SerialLog(), "iPXE", 2*time.Minute) // the network boot
	pid := q.PID()

	// After a once= start, a reset without override is a plain reset.
	if err := q.Reset(ctx, vbmc.Boot{Enabled: vbmc.BootDisabled, Target: vbmc.TargetNone}); err != nil {
		t.Fatal(err)
	}
	if q.PID() != pid {
		t.Errorf("a plain reset restarted QEMU")
	}
	// A reset that needs another boot order restarts QEMU.
	if err := q.Reset(ctx, vbmc.Boot{Enabled: vbmc.BootContinuous, Target: vbmc.TargetHdd}); err != nil {
		t.Fatal(err)
	}
	if q.PID() == pid || q.PID() == 0 {
		t.Errorf("a reset to a new boot order kept process %d (now %d)", pid, q.PID())
	}
	processGone(t, pid)
	waitFile(t, q.SerialLog(), "SeaBIOS", 2*time.Minute)

	// Graceful: the firmware ignores ACPI, so the VM is stopped after the 1s timeout.
	pid = q.PID()
	start := time.Now()
	if err := q.PowerOff(ctx, false); err != nil {
		t.Fatal(err)
	}
	waitState(t, q, vbmc.Off, 30*time.Second)
	if d := time.Since(start); d < time.Second {
		t.Errorf("graceful shutdown forced after %v, before the timeout", d)
	}
	processGone(t, pid)

	// A VM whose process ends by itself (as when the guest powers off) is off.
	if err := q.PowerOn(ctx, vbmc.Boot{}); err != nil {
		t.Fatal(err)
	}
	pid = q.PID()
	syscall.Kill(pid, syscall.SIGTERM)
	waitState(t, q, vbmc.Off, 30*time.Second)
	processGone(t, pid)
	if err := q.Reset(ctx, vbmc.Boot{}); err != vbmc.ErrPoweredOff {
		t.Errorf("reset while off: %v", err)
	}

	// Hard off.
	if err := q.PowerOn(ctx, vbmc.Boot{}); err != nil {
		t.Fatal(err)
	}
	pid = q.PID()
	if err := q.PowerOff(ctx, true); err != nil {
		t.Fatal(err)
	}
	if st, _ := q.State(ctx); st != vbmc.Off {
		t.Errorf("after hard off: %s", st)
	}
	processGone(t, pid)

	// Close stops a running VM.
	if err := q.PowerOn(ctx, vbmc.Boot{}); err != nil {
		t.Fatal(err)
	}
	pid = q.PID()
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	processGone(t, pid)
	if err := q.PowerOn(ctx, vbmc.Boot{}); err != vbmc.ErrClosed {
		t.Errorf("power on after Close: %v", err)
	}
}

func TestQEMUStartFailure(t *testing.T) {
	needTool(t, "qemu-system-x86_64")
	q, err := vbmc.NewQEMU(vbmc.QEMUConfig{Name: "bad", Memory: "64M", StateDir: t.TempDir(), Args: []string{"-no-such-option"}})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	err = q.PowerOn(context.Background(), vbmc.Boot{})
	if err == nil || !strings.Contains(err.Error(), "no-such-option") {
		t.Fatalf("power on with a bad argument: %v, want QEMU's complaint", err)
	}
	if st, _ := q.State(context.Background()); st != vbmc.Off {
		t.Errorf("after a failed start: %s", st)
	}
}
