package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/kilnhq/kiln/power"
	"github.com/kilnhq/kiln/spec"
	"github.com/prometheus/client_golang/prometheus"
)

// runPower drives one machine's BMC by name, with the same drivers and
// execution policy the rack agents use.
func runPower(ctx context.Context, args []string, out, errOut io.Writer) int {
	fs := newFlags("power", "on|off|soft-off|cycle|status|boot-network|boot-disk MACHINE [flags]", errOut)
	var cf clientFlags
	cf.register(fs)
	persistent := fs.Bool("persistent", false, "boot-*: every boot from now on, not only the next")
	uefi := fs.Bool("uefi", false, "boot-*: ask for the UEFI flavour (default: from the machine's firmware)")
	opTimeout := fs.Duration("op-timeout", 30*time.Second, "timeout of one attempt against the BMC")
	pos, code, ok := parseArgs(fs, args, nArgs(2, 2))
	if !ok {
		return code
	}
	action, name := pos[0], pos[1]
	store, closeFn, ok := cf.connect("power", errOut)
	if !ok {
		return exitFail
	}
	defer closeFn()
	rctx, cancel := context.WithTimeout(ctx, cf.timeout)
	snap, err := store.Snapshot(rctx, spec.KindMachine)
	if err == nil {
		err = store.FillSecrets(rctx, "", snap.Inventory)
	}
	cancel()
	if err != nil {
		fmt.Fprintln(errOut, "kiln power:", explain(cf, err))
		return exitFail
	}
	m := snap.Inventory.Machines[name]
	if m == nil {
		fmt.Fprintf(errOut, "kiln power: machine %q not found\n", name)
		return exitFail
	}
	t, err := power.TargetFor(m)
	if err != nil {
		fmt.Fprintln(errOut, "kiln power:", err)
		return exitFail
	}
	exec := power.NewExecutor(power.Policy{Timeout: *opTimeout}, power.NewMetrics(prometheus.NewRegistry()), discardLogger())
	defer exec.Close()
	boot := power.Boot{Persistent: *persistent, UEFI: *uefi || power.BootFor(m, "").UEFI}
	switch action {
	case "on":
		err = exec.PowerOn(ctx, t)
	case "off":
		err = exec.PowerOff(ctx, t, true)
	case "soft-off":
		err = exec.PowerOff(ctx, t, false)
	case "cycle":
		err = exec.PowerCycle(ctx, t)
	case "status":
		var st power.State
		if st, err = exec.Status(ctx, t); err == nil {
			fmt.Fprintln(out, st)
		}
	case "boot-network", "boot-disk":
		boot.Device = power.Device(strings.TrimPrefix(action, "boot-"))
		err = exec.SetBoot(ctx, t, boot)
	default:
		fmt.Fprintf(errOut, "kiln power: unknown action %q\n", action)
		fs.Usage()
		return exitUsage
	}
	if err != nil {
		fmt.Fprintln(errOut, "kiln power:", err)
		return exitFail
	}
	return exitOK
}
