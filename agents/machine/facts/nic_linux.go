package facts

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/kilnhq/kiln/spec/agentapi"
)

// NICCollector lists the physical network interfaces under
// /sys/class/net: those with a device link (no loopback, bridges, veths).
type NICCollector struct{ Sys string }

// Name implements Collector.
func (NICCollector) Name() string { return "nics" }

// Collect implements Collector.
func (c NICCollector) Collect(_ context.Context, f *agentapi.Facts) error {
	nics, err := NICs(c.Sys)
	if err != nil {
		return err
	}
	f.NICs = nics
	return nil
}

// NICs lists the physical interfaces, sorted by name.
func NICs(sys string) ([]agentapi.NIC, error) {
	dir := filepath.Join(sys, "class", "net")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list network interfaces: %w", err)
	}
	nics := []agentapi.NIC{}
	for _, e := range ents {
		n := filepath.Join(dir, e.Name())
		dev, err := os.Readlink(filepath.Join(n, "device"))
		if err != nil {
			continue // virtual
		}
		nic := agentapi.NIC{
			Name:      e.Name(),
			MAC:       strings.ToLower(readTrim(filepath.Join(n, "address"))),
			OperState: readTrim(filepath.Join(n, "operstate")),
			Carrier:   readTrim(filepath.Join(n, "carrier")) == "1",
		}
		if drv, err := os.Readlink(filepath.Join(n, "device", "driver")); err == nil {
			nic.Driver = filepath.Base(drv)
		}
		// The device link is relative to the interface's own sysfs folder.
		if real, err := os.Readlink(n); err == nil {
			nic.PCI, _ = lastPCI(filepath.Join(real, dev))
		}
		if nic.PCI == "" {
			nic.PCI, _ = lastPCI(dev)
		}
		if v, ok := readInt(filepath.Join(n, "speed")); ok && v > 0 {
			nic.SpeedMbps = int(v)
		}
		if v, ok := readInt(filepath.Join(n, "mtu")); ok {
			nic.MTU = int(v)
		}
		nics = append(nics, nic)
	}
	sort.Slice(nics, func(i, j int) bool { return nics[i].Name < nics[j].Name })
	return nics, nil
}
