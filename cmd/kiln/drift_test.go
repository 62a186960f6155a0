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
	if cfg.Policy.FastTrackWindow != 0 {
		t.Fatal("a fast-track window by default")
	}
	if cfg, err = parse("--fast-track-window=5m"); err != nil || cfg.Policy.FastTrackWindow != 5*time.Minute {
		t.Fatalf("--fast-track-window=5m: %+v, %v", cfg.Policy, err)
	}
	for _, bad := range [][]string{{"--fast-track-window=31m"}, {"--fast-track-window=-1s"}, {"--fast-track-window=1m", "--fast-track=false"}} {
		if _, err = parse(bad...); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}
