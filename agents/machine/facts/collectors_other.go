//go:build !linux

package facts

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"time"

	"github.com/kilnhq/kiln/spec/agentapi"
)

var errOS = fmt.Errorf("hardware facts on %s: %w", runtime.GOOS, errors.ErrUnsupported)

// Default has no collectors off Linux.
func Default(Roots, time.Duration, *slog.Logger) []Collector { return nil }

// Disks is Linux only.
func Disks(Roots) ([]agentapi.Disk, error) { return nil, errOS }

// NICs is Linux only.
func NICs(string) ([]agentapi.NIC, error) { return nil, errOS }
