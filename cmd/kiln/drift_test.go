package main

import (
	"flag"
	"io"
	"testing"
	"time"

	"github.com/kilnhq/kiln/reconciler"
)

func TestPowerDriftGraceFlag(t *testing.T) {
	parse := func(args ...string) (reconciler.Config, error) {
		var r regionFlags
		fs := flag.NewFlagSet("server", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		r.register(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		return r.config()
	}
	cfg, err := parse()
	if err != nil || cfg.Policy.PowerDriftGrace != reconciler.DefaultPowerDriftGrace {
		t.Fatalf("default: %s, %v", cfg.Policy.PowerDriftGrace, err)
	}
	if cfg, err = parse("--power-drift-grace=30s"); err != nil || cfg.Policy.PowerDriftGrace != 30*time.Second {
		t.Fatalf("30s: %s, %v", cfg.Policy.PowerDriftGrace, err)
	}
	if _, err = parse("--power-drift-grace=0s"); err == nil {
		t.Fatal("a zero grace was accepted")
	}
	if cfg.Policy.NoFastTrack {
		t.Fatal("fast track is off by default")
	}
	if cfg, err = parse("--fast-track=false"); err != nil || !cfg.Policy.NoFastTrack {
		t.Fatalf("--fast-track=false: %+v, %v", cfg.Policy, err)
	}
}
