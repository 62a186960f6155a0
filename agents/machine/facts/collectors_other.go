//go:build !linux

package facts

import (
	"context"
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

// Watching has no collectors off Linux.
func Watching(Roots, *LLDPWatch, *slog.Logger) []Collector { return nil }

// listenLLDP is Linux only.
func listenLLDP(context.Context, string) (*agentapi.Neighbor, error) { return nil, errOS }

// Disks is Linux only.
func Disks(Roots) ([]agentapi.Disk, error) { return nil, errOS }

// NICs is Linux only.
func NICs(string) ([]agentapi.NIC, error) { return nil, errOS }
