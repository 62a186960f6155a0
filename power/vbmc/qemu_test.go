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
		"-netdev tap,id=net0,ifname=tap7,script=no,downscript=no -device virtio-net-pci,netdev=net0,mac=52:54:00:42:00:07",
		"-netdev user,id=net1 -device e1000,netdev=net1",
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
