//go:build !linux

package facts

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"time"
)

var errOS = fmt.Errorf("hardware facts on %s: %w", runtime.GOOS, errors.ErrUnsupported)

// Default has no collectors off Linux.
func Default(Roots, time.Duration, *slog.Logger) []Collector { return nil }

// Disks is Linux only.
func Disks(Roots) ([]Disk, error) { return nil, errOS }

// NICs is Linux only.
func NICs(string) ([]NIC, error) { return nil, errOS }
