package facts

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kilnhq/kiln/spec/agentapi"
)

// DMICollector reads /sys/class/dmi/id. Machines without DMI (some arm64
// boards) get empty DMI facts, not an error.
type DMICollector struct{ Sys string }

// Name implements Collector.
func (DMICollector) Name() string { return "dmi" }

// Collect implements Collector.
func (c DMICollector) Collect(_ context.Context, f *agentapi.Facts) error {
	dir := filepath.Join(c.Sys, "class", "dmi", "id")
	if _, err := os.Stat(dir); err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return fmt.Errorf("dmi: %w", err)
	}
	r := func(name string) string { return readTrim(filepath.Join(dir, name)) }
	f.DMI = agentapi.DMI{
		Vendor:       r("sys_vendor"),
		Product:      r("product_name"),
		Version:      r("product_version"),
		Serial:       r("product_serial"),
		UUID:         r("product_uuid"),
		BoardVendor:  r("board_vendor"),
		BoardName:    r("board_name"),
		BoardSerial:  r("board_serial"),
		ChassisType:  r("chassis_type"),
		ChassisAsset: r("chassis_asset_tag"),
		BIOSVendor:   r("bios_vendor"),
		BIOSVersion:  r("bios_version"),
		BIOSDate:     r("bios_date"),
	}
	return nil
}
