package facts

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/kilnhq/kiln/spec/agentapi"
)

// Collector fills in one area of the facts.
type Collector interface {
	Name() string
	Collect(ctx context.Context, f *agentapi.Facts) error
}

// Collect runs every collector in order. A collector that fails is logged
// and named in Facts.Errors; the others still run.
func Collect(ctx context.Context, log *slog.Logger, arch string, collectors []Collector) agentapi.Facts {
	f := agentapi.Facts{Version: agentapi.FactsVersion, Arch: arch, Disks: []agentapi.Disk{}, NICs: []agentapi.NIC{}, LLDP: []agentapi.Neighbor{}}
	for _, c := range collectors {
		if err := ctx.Err(); err != nil {
			f.Errors = append(f.Errors, fmt.Sprintf("%s: %v", c.Name(), err))
			continue
		}
		if err := c.Collect(ctx, &f); err != nil {
			log.Warn("facts collector failed", "collector", c.Name(), "err", err)
			f.Errors = append(f.Errors, fmt.Sprintf("%s: %v", c.Name(), err))
		}
	}
	return f
}

// Roots are where the collectors read the kernel's view of the machine.
type Roots struct {
	Sys  string // /sys
	Proc string // /proc
	Dev  string // /dev
}

// DefaultRoots are the real ones.
var DefaultRoots = Roots{Sys: "/sys", Proc: "/proc", Dev: "/dev"}
