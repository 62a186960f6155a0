package vbmc

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestQEMUUEFIOnce runs OVMF (TCG, no disk, user-mode networking with the
// NIC's ROM off): a one-time network override boots OVMF's own PXE first,
// and the bootindex is cleared once the firmware has read it, so that the
// guest's next reset follows the firmware's order; a persistent one keeps
// it.
func TestQEMUUEFIOnce(t *testing.T) {
	const ovmf = "/usr/share/ovmf/OVMF.fd"
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 is not installed")
	}
	if _, err := os.Stat(ovmf); err != nil {
		t.Skip("OVMF is not installed (apt-get install ovmf)")
	}
	if testing.Short() {
		t.Skip("starts a QEMU VM; skipped with -short")
	}
	q, err := NewQEMU(QEMUConfig{Name: "uefi-test", Memory: "256M", Firmware: ovmf, DisableNICROM: true,
		NICs: []NIC{{}}, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	ctx := context.Background()
	bootindex := func() int {
		t.Helper()
		raw, err := qmp(ctx, q.QMPSocket(), "qom-get", map[string]any{"path": "/machine/peripheral/net0", "property": "bootindex"})
		if err != nil {
			t.Fatal(err)
		}
		var n int
		if err := json.Unmarshal(raw, &n); err != nil {
			t.Fatalf("qom-get: %s: %v", raw, err)
		}
		return n
	}

	if err := q.PowerOn(ctx, Boot{Enabled: BootContinuous, Target: TargetPxe, UEFI: true}); err != nil {
		t.Fatal(err)
	}
	if n := bootindex(); n != 1 {
		t.Errorf("continuous network override: NIC bootindex %d, want 1", n)
	}
	if err := q.PowerOff(ctx, true); err != nil {
		t.Fatal(err)
	}

	if err := q.PowerOn(ctx, Boot{Enabled: BootOnce, Target: TargetPxe, UEFI: true}); err != nil {
		t.Fatal(err)
	}
	if n := bootindex(); n != -1 {
		t.Errorf("one-time network override: NIC bootindex %d after the start, want -1 (cleared)", n)
	}
	// This boot still follows the override: OVMF's own PXE (no iPXE ROM).
	deadline := time.Now().Add(3 * time.Minute)
	for {
		b, _ := os.ReadFile(q.SerialLog())
		if strings.Contains(string(b), "Start PXE over IPv4") {
			if strings.Contains(string(b), "iPXE") {
				t.Errorf("the NIC's iPXE ROM ran although disableNICROM is set:\n%s", b)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("OVMF did not start PXE:\n%s", b)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// A reset without override is a plain reset of the same process.
	pid := q.PID()
	if err := q.Reset(ctx, Boot{Enabled: BootDisabled, Target: TargetPxe, UEFI: true}); err != nil {
		t.Fatal(err)
	}
	if q.PID() != pid {
		t.Errorf("a reset to the firmware's order restarted QEMU after a one-time override")
	}
	// A reset with a one-time override needs a new bootindex: a new process.
	if err := q.Reset(ctx, Boot{Enabled: BootOnce, Target: TargetPxe, UEFI: true}); err != nil {
		t.Fatal(err)
	}
	if q.PID() == pid {
		t.Errorf("a reset with a one-time override kept process %d", pid)
	}
}
