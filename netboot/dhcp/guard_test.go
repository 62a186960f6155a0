package dhcp

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// A dynamic range of 10: the ninth lease passes 90% (a warning and a
// rack event, once), the tenth exhausts it, and a client refused for
// want of an address warns again — at warn level, not debug.
func TestPoolNearExhaustionWarns(t *testing.T) {
	cfg := testConfig()
	cfg.Subnets[0].Dynamic = &Range{ip("10.42.0.100"), ip("10.42.0.109")}
	h := newHarness(t, cfg, nil, Options{})
	var logs bytes.Buffer
	h.s.poolWatch.log = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	for i := range 8 {
		if _, ack := h.dora(fmt.Sprintf("02:00:00:00:00:%02x", i), onLab); ack == nil {
			t.Fatal("no ack")
		}
	}
	h.s.checkPools()
	if evs := h.events.of(EventPoolLow, ""); len(evs) != 0 {
		t.Fatalf("warned at 80%%: %+v", evs)
	}
	h.dora("02:00:00:00:00:08", onLab)
	h.s.checkPools()
	h.s.checkPools()
	if evs := h.events.of(EventPoolLow, ""); len(evs) != 1 || evs[0].Subnet != "lab" {
		t.Fatalf("pool-low events at 90%%: %+v", evs)
	}
	want := `
# HELP kiln_dhcp_pool_free Free addresses of the subnet's dynamic range.
# TYPE kiln_dhcp_pool_free gauge
kiln_dhcp_pool_free{subnet="lab"} 1
kiln_dhcp_pool_free{subnet="remote"} 51
kiln_dhcp_pool_free{subnet="site"} 0
# HELP kiln_dhcp_pool_size Usable addresses of the subnet's dynamic range (free plus used).
# TYPE kiln_dhcp_pool_size gauge
kiln_dhcp_pool_size{subnet="lab"} 10
kiln_dhcp_pool_size{subnet="remote"} 51
kiln_dhcp_pool_size{subnet="site"} 0
`
	if err := testutil.GatherAndCompare(h.reg, strings.NewReader(want), "kiln_dhcp_pool_free", "kiln_dhcp_pool_size"); err != nil {
		t.Error(err)
	}
	h.dora("02:00:00:00:00:09", onLab)
	if r, _ := h.handle(discover("02:00:00:00:00:0a"), onLab); r != nil {
		t.Fatalf("offered from a full range: %s", yiaddr(r))
	}
	if evs := h.events.of(EventPoolExhausted, ""); len(evs) != 1 {
		t.Fatalf("pool-exhausted events: %+v", evs)
	}
	// A flood of refused clients warns once a minute, not per packet.
	for i := range 50 {
		h.handle(discover(fmt.Sprintf("02:00:00:00:01:%02x", i)), onLab)
	}
	h.s.checkPools()
	if evs := h.events.of(EventPoolExhausted, ""); len(evs) != 1 {
		t.Fatalf("pool-exhausted events after a flood: %d", len(evs))
	}
	h.clock.Add(2 * time.Minute)
	h.handle(discover("02:00:00:00:02:00"), onLab)
	if evs := h.events.of(EventPoolExhausted, ""); len(evs) != 2 {
		t.Fatalf("pool-exhausted events a minute later: %d", len(evs))
	}
	if got := logs.String(); strings.Count(got, "level=WARN") != 3 || !strings.Contains(got, "more than 90% used") || !strings.Contains(got, "exhausted") {
		t.Errorf("warnings:\n%s", got)
	}
}
