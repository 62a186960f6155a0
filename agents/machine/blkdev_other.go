//go:build !linux

package machine

import (
	"fmt"
	"log/slog"
	"os"
)

func rereadPartitions(*os.File, *slog.Logger) {}

func discard(f *os.File, _ int64) (string, error) {
	return "", fmt.Errorf("%w: discard of %s needs Linux", ErrSecureEraseUnsupported, f.Name())
}
