package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
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
	force := fs.Bool("force", false, "through the API (--server): interrupt a working phase (the phase fails)")
	pos, code, ok := parseArgs(fs, args, nArgs(2, 2))
	if !ok {
		return code
	}
	action, name := pos[0], pos[1]
	if err := cf.resolve(); err != nil {
		fmt.Fprintln(errOut, "kiln power:", err)
		return exitUsage
	}
	if cf.server != "" {
		return powerThroughAPI(ctx, cf, action, name, *force, out, errOut)
	}
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

// powerThroughAPI asks the region leader for on, off or cycle (a power
// task it writes, the wanted state not called drift), or reads the last
// observed state; the BMC is never driven from here.
func powerThroughAPI(ctx context.Context, cf clientFlags, action, name string, force bool, out, errOut io.Writer) int {
	a, err := newAPIReader(cf.server, cf.token, cf.serverCA)
	if err != nil {
		fmt.Fprintln(errOut, "kiln power:", err)
		return exitUsage
	}
	ctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	switch action {
	case "on", "off", "cycle":
		q := "?action=" + action
		if force {
			q += "&force=true"
		}
		var res struct{ Phase string }
		if err := a.do(ctx, "POST", "/api/v1/machines/"+url.PathEscape(name)+"/power"+q, &res); err != nil {
			fmt.Fprintln(errOut, "kiln power:", err)
			return exitFail
		}
		fmt.Fprintf(out, "%s: power %s asked of the region (machine %s); follow it with: kiln events %s\n", name, action, dash(res.Phase), name)
		return exitOK
	case "status":
		st, err := a.Status(ctx, name)
		if err != nil {
			fmt.Fprintln(errOut, "kiln power:", err)
			return exitFail
		}
		fmt.Fprintf(out, "%s (observed %s)\n", dash(st.Power), st.PowerAt.Format(time.RFC3339))
		return exitOK
	}
	fmt.Fprintln(errOut, "kiln power:", errEtcdOnly("power "+action))
	return exitUsage
}
