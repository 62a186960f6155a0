//go:build !linux

package machine

import (
	"context"
	"errors"
	"log/slog"
)

// BringUpNetwork is Linux only.
func BringUpNetwork(context.Context, *slog.Logger, NetworkOptions) (Lease, error) {
	return Lease{}, errors.ErrUnsupported
}
