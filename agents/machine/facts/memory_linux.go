package facts

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/kilnhq/kiln/spec/agentapi"
)

// MemoryCollector reads MemTotal from /proc/meminfo.
type MemoryCollector struct{ Proc string }

// Name implements Collector.
func (MemoryCollector) Name() string { return "memory" }

// Collect implements Collector.
func (c MemoryCollector) Collect(_ context.Context, f *agentapi.Facts) error {
	p := filepath.Join(c.Proc, "meminfo")
	fh, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("read meminfo: %w", err)
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			break
		}
		n, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return fmt.Errorf("%s: MemTotal %q: %w", p, fields[0], err)
		}
		if len(fields) > 1 && fields[1] == "kB" {
			n *= 1024
		}
		f.Memory.TotalBytes = n
		return nil
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	return fmt.Errorf("%s has no MemTotal line", p)
}
