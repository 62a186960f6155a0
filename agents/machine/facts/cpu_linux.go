package facts

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kilnhq/kiln/spec/agentapi"
)

// CPUCollector reads /proc/cpuinfo.
type CPUCollector struct{ Proc string }

// Name implements Collector.
func (CPUCollector) Name() string { return "cpu" }

// Collect implements Collector.
func (c CPUCollector) Collect(_ context.Context, f *agentapi.Facts) error {
	p := filepath.Join(c.Proc, "cpuinfo")
	fh, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("read cpuinfo: %w", err)
	}
	defer fh.Close()
	sockets := map[string]bool{}
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case "processor":
			f.CPU.Count++
		case "model name":
			if f.CPU.Model == "" {
				f.CPU.Model = v
			}
		case "physical id":
			sockets[v] = true
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	if f.CPU.Count == 0 {
		return fmt.Errorf("%s lists no processor", p)
	}
	f.CPU.Sockets = max(len(sockets), 1)
	return nil
}
