package facts

import (
	"log/slog"
	"time"
)

// Default is every collector, in the order they run: NICs come before
// LLDP, which listens on them.
func Default(roots Roots, lldpWait time.Duration, log *slog.Logger) []Collector {
	return collectors(roots, LLDPCollector{Wait: lldpWait, Log: log})
}

// Watching is Default with the LLDP neighbours w has heard since the
// agent started.
func Watching(roots Roots, w *LLDPWatch, log *slog.Logger) []Collector {
	return collectors(roots, LLDPCollector{Watch: w, Log: log})
}

func collectors(roots Roots, lldp LLDPCollector) []Collector {
	return []Collector{
		CPUCollector{Proc: roots.Proc},
		MemoryCollector{Proc: roots.Proc},
		DMICollector{Sys: roots.Sys},
		DiskCollector{Roots: roots},
		NICCollector{Sys: roots.Sys},
		lldp,
	}
}
