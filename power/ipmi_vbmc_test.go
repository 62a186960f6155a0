package power

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/power/vbmc"
	"github.com/kilnhq/kiln/power/vbmc/vbmctest"
)

// Kiln's ipmi driver against Kiln's virtual BMC, through the executor.
func TestIPMIAgainstVirtualBMC(t *testing.T) {
	m := vbmc.NewMemory()
	b := vbmctest.Start(t, m)
	e, _, _ := testExecutor(t, Policy{Timeout: 5 * time.Second})
	ctx := context.Background()
	tg := Target{Machine: "vm-1", Driver: "ipmi", Address: b.IPMIAddr(), Username: vbmctest.Username, Password: vbmctest.Password}

	setBoot(t, e, tg, b, Boot{Device: Network, UEFI: true}, vbmc.Boot{Target: vbmc.TargetPxe, Enabled: vbmc.BootOnce, UEFI: true})
	if err := e.PowerOn(ctx, tg); err != nil {
		t.Fatal(err)
	}
	if st, err := e.Status(ctx, tg); err != nil || st != On {
		t.Fatalf("status: %v %v", st, err)
	}
	if err := e.PowerOff(ctx, tg, false); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, vbmc.Off)
	setBoot(t, e, tg, b, Boot{Device: Disk, Persistent: true}, vbmc.Boot{Target: vbmc.TargetHdd, Enabled: vbmc.BootContinuous})
	if err := e.PowerCycle(ctx, tg); err != nil { // off: cycle powers up
		t.Fatal(err)
	}
	if st, _ := e.Status(ctx, tg); st != On {
		t.Fatalf("after cycle from off: %v", st)
	}

	// An unexpected completion code from the BMC: named, retried, counted.
	if err := b.SetFaults(vbmc.Faults{FailNext: 1, Protocol: "ipmi", IPMICompletionCode: 0xC0}); err != nil {
		t.Fatal(err)
	}
	if err := e.PowerOff(ctx, tg, true); err != nil {
		t.Fatalf("one busy answer then success: %v", err)
	}
	if err := b.SetFaults(vbmc.Faults{ErrorRate: 1, Protocol: "ipmi", IPMICompletionCode: 0xD5}); err != nil {
		t.Fatal(err)
	}
	_, err := e.Status(ctx, tg)
	if err == nil || !strings.Contains(err.Error(), "0xD5") || !strings.Contains(err.Error(), "machine vm-1") {
		t.Fatalf("completion code 0xD5: %v", err)
	}
	b.SetFaults(vbmc.Faults{})

	wrong := tg
	wrong.Password = "wrong-ipmi-pw"
	if _, err := e.Status(ctx, wrong); !errors.Is(err, ErrAuth) || strings.Contains(err.Error(), "wrong-ipmi-pw") {
		t.Fatalf("wrong password: %v", err)
	}
}

// setBoot sets boot through the executor and checks the BMC now holds
// want.
func setBoot(t *testing.T, e *Executor, tg Target, b *vbmc.BMC, boot Boot, want vbmc.Boot) {
	t.Helper()
	if err := e.SetBoot(context.Background(), tg, boot); err != nil {
		t.Fatal(err)
	}
	if got := b.Boot(); got != want {
		t.Fatalf("boot override on the BMC: %+v, want %+v", got, want)
	}
}
