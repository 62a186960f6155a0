package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/kilnhq/kiln/inventory"
)

// runExport prints discovered machines as Machine documents, ready to be
// reviewed and committed.
func runExport(ctx context.Context, args []string, out, errOut io.Writer) int {
	fs := newFlags("export", "discovered [flags]", errOut)
	var cf clientFlags
	cf.register(fs)
	pos, code, ok := parse(fs, args)
	if !ok {
		return code
	}
	if len(pos) != 1 || pos[0] != "discovered" {
		fs.Usage()
		return exitUsage
	}
	store, closeFn, err := cf.store()
	if err != nil {
		fmt.Fprintln(errOut, "kiln export:", err)
		return exitFail
	}
	defer closeFn()
	ctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	ds, err := store.ListDiscovered(ctx)
	if err != nil {
		fmt.Fprintln(errOut, "kiln export:", explain(cf, err))
		return exitFail
	}
	snap, err := store.Snapshot(ctx, "Machine")
	known := map[string]bool{}
	if err == nil {
		for _, m := range snap.Inventory.Machines {
			for _, i := range m.Spec.Interfaces {
				known[i.MAC] = true
			}
		}
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i].FirstSeen.Before(ds[j].FirstSeen) })
	n := 0
	for _, d := range ds {
		if known[d.MAC] {
			continue // already in the inventory
		}
		n++
		fmt.Fprint(out, machineDoc(d))
	}
	if n == 0 {
		fmt.Fprintln(errOut, "kiln export: no discovered machines that the inventory lacks")
	}
	return exitOK
}

func machineDoc(d inventory.Discovered) string {
	arch, firmware := "amd64", "uefi"
	switch {
	case d.Arch == "bios":
		firmware = "bios"
	case strings.Contains(d.Arch, "arm64"):
		arch = "arm64"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "---\n# discovered on rack %s, first seen %s", d.Rack, d.FirstSeen.Format("2006-01-02 15:04:05Z07:00"))
	if d.VendorClass != "" {
		fmt.Fprintf(&b, ", vendor class %s", d.VendorClass)
	}
	if d.CircuitID != "" {
		fmt.Fprintf(&b, ", switch port %s", d.CircuitID)
	}
	fmt.Fprintf(&b, "\napiVersion: kiln.dev/v1alpha1\nkind: Machine\nmetadata:\n  name: node-%s   # name it\nspec:\n", strings.ReplaceAll(d.MAC, ":", ""))
	fmt.Fprintf(&b, "  rack: %s\n  arch: %s\n  firmware: %s\n  state: ready\n  interfaces:\n", d.Rack, arch, firmware)
	fmt.Fprintf(&b, "    - {name: eno1, mac: %q", d.MAC)
	if d.Subnet != "" {
		fmt.Fprintf(&b, ", subnet: %s", d.Subnet)
	}
	b.WriteString("}\n  bmc: {driver: manual}   # set the BMC\n")
	return b.String()
}
