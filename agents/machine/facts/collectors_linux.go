package facts

import (
	"log/slog"
	"time"
)

// Default is every collector, in the order they run: NICs come before
// LLDP, which listens on them.
func Default(roots Roots, lldpWait time.Duration, log *slog.Logger) []Collector {
	return []Collector{
		CPUCollector{Proc: roots.Proc},
		MemoryCollector{Proc: roots.Proc},
		DMICollector{Sys: roots.Sys},
		DiskCollector{Roots: roots},
		NICCollector{Sys: roots.Sys},
		LLDPCollector{Wait: lldpWait, Log: log},
	}
}
