package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/kilnhq/kiln/agents/machine/facts"
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
		var f *facts.Facts
		if st, err := inventory.GetJSON[inventory.MachineStatus](ctx, store, store.MachineStatusKey(discoveredName(d.MAC))); err == nil && len(st.Facts) > 0 {
			f = new(facts.Facts)
			if json.Unmarshal(st.Facts, f) != nil {
				f = nil // facts of an older agent: export without them
			}
		}
		fmt.Fprint(out, machineDoc(d, f))
	}
	if n == 0 {
		fmt.Fprintln(errOut, "kiln export: no discovered machines that the inventory lacks")
	}
	return exitOK
}

// discoveredName is the name the boot server gives an unknown MAC (its
// facts are stored under it).
func discoveredName(mac string) string { return "discovered-" + strings.ReplaceAll(mac, ":", "-") }

// machineDoc writes a Machine document for a discovered MAC; the facts its
// agent reported, when there are any, fill in the hardware.
func machineDoc(d inventory.Discovered, f *facts.Facts) string {
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
	b.WriteString("\n")
	if f != nil {
		fmt.Fprintf(&b, "# hardware: %s %s, serial %s; %d CPUs (%s), %d MiB memory\n",
			dash(f.DMI.Vendor), dash(f.DMI.Product), dash(f.DMI.Serial), f.CPU.Count, dash(f.CPU.Model), f.Memory.TotalBytes>>20)
		for _, dk := range f.Disks {
			fmt.Fprintf(&b, "# disk %s: %d GiB %s, serial %s, rotational %v\n", dk.Name, dk.SizeBytes>>30, dash(dk.Model), dash(dk.Serial), dk.Rotational)
		}
		for _, n := range f.LLDP {
			fmt.Fprintf(&b, "# %s is cabled to switch %s port %s\n", n.MAC, dash(n.SystemName), n.PortID)
		}
		if f.Arch == "arm64" || f.Arch == "amd64" {
			arch = f.Arch
		}
	}
	fmt.Fprintf(&b, "apiVersion: kiln.dev/v1alpha1\nkind: Machine\nmetadata:\n  name: node-%s   # name it\nspec:\n", strings.ReplaceAll(d.MAC, ":", ""))
	fmt.Fprintf(&b, "  rack: %s\n  arch: %s\n  firmware: %s\n  state: ready\n  interfaces:\n", d.Rack, arch, firmware)
	fmt.Fprintf(&b, "    - {name: eno1, mac: %q", d.MAC)
	if d.Subnet != "" {
		fmt.Fprintf(&b, ", subnet: %s", d.Subnet)
	}
	b.WriteString("}\n")
	if f != nil {
		i := 2
		for _, n := range f.NICs {
			if !strings.EqualFold(n.MAC, d.MAC) && n.MAC != "" {
				fmt.Fprintf(&b, "    - {name: eno%d, mac: %q}   # %s, not network-booted\n", i, n.MAC, dash(n.Driver))
				i++
			}
		}
		// The first fixed disk with a serial: a selector that survives
		// renamed devices.
		for _, dk := range f.Disks {
			if !dk.Removable && dk.Serial != "" {
				fmt.Fprintf(&b, "  rootDisk: {serial: %q}   # %s, %d GiB\n", dk.Serial, dk.Name, dk.SizeBytes>>30)
				break
			}
		}
	}
	b.WriteString("  bmc: {driver: manual}   # set the BMC\n")
	return b.String()
}
