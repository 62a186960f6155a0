package main

import (
	"context"
	"fmt"
	"io"

	"github.com/kilnhq/kiln/inventory"
)

// runExport prints discovered machines as Machine documents, ready to be
// reviewed and committed.
func runExport(ctx context.Context, args []string, out, errOut io.Writer) int {
	fs := newFlags("export", "discovered [flags]", errOut)
	var cf clientFlags
	cf.register(fs)
	_, code, ok := parseArgs(fs, args, func(pos []string) bool { return len(pos) == 1 && pos[0] == "discovered" })
	if !ok {
		return code
	}
	store, _, closeFn, ok := cf.open("export", errOut)
	if !ok {
		return exitFail
	}
	defer closeFn()
	ctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	found, err := store.DiscoveredMachines(ctx)
	if err != nil {
		fmt.Fprintln(errOut, "kiln export:", explain(cf, err))
		return exitFail
	}
	if len(found) == 0 {
		fmt.Fprintln(errOut, "kiln export: no discovered machines that the inventory lacks")
		return exitOK
	}
	if err := inventory.ExportDiscovered(out, found); err != nil {
		fmt.Fprintln(errOut, "kiln export:", err)
		return exitFail
	}
	return exitOK
}
