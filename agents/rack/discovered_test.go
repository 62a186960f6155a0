package rack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/etcdtest"
	"github.com/kilnhq/kiln/netboot/boot"
	"github.com/kilnhq/kiln/netboot/dhcp"
	"github.com/kilnhq/kiln/spec/kilntest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// discoveryAgent is an agent whose event log runs (what the DHCP server
// and the boot servers write through), without serving.
func discoveryAgent(t *testing.T, cfg Config) (*Agent, *inventory.Store, *clientv3.Client, *prometheus.Registry, *bytes.Buffer) {
	t.Helper()
	cli, _ := etcdtest.Start(t)
	store := inventory.NewStore(cli, "", quiet())
	reg := prometheus.NewRegistry()
	var logs bytes.Buffer
	cfg.Rack = "r1"
	a := New(cfg, store, reg, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})))
	a.events.every = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.events.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return a, store, cli, reg, &logs
}

func macN(i int) string {
	return fmt.Sprintf("02:00:%02x:%02x:%02x:%02x", i>>24&0xff, i>>16&0xff, i>>8&0xff, i&0xff)
}

func countKeys(t *testing.T, cli *clientv3.Client, prefix string) int64 {
	t.Helper()
	resp, err := cli.Get(context.Background(), prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count
}

// The attack: a flood of unknown MACs. With the cap lowered to
// 50, 2,000 MACs booting (each seen by DHCP and fetching a script) leave
// at most 50 discovered records and 50 timelines in etcd, etcd small,
// the gauge at the cap, refusals counted, and one warning on the rack's
// timeline and in the log.
func TestDiscoveryFloodIsBounded(t *testing.T) {
	a, store, cli, reg, logs := discoveryAgent(t, Config{MaxDiscovered: 50})
	const n = 2000
	for i := range n {
		mac := macN(i)
		a.events.Record(dhcp.Event{Time: time.Now(), Type: dhcp.EventSeen, MAC: mac, Subnet: "lab", VendorClass: strings.Repeat("x", 200)})
		a.events.RecordTimeline("discovered-"+strings.ReplaceAll(mac, ":", "-"), "http-script", "boot script fetched")
		if i%500 == 499 { // the event buffers hold 8192 and 1024: let the writer keep up, as a real flood's pace would
			kilntest.Eventually(t, 30*time.Second, "the batch written", func() bool {
				return testutil.ToFloat64(a.discovered.refused)+testutil.ToFloat64(a.discovered.gauge) >= float64(i+1)
			})
		}
	}
	kilntest.Eventually(t, 30*time.Second, "every MAC recorded or refused", func() bool {
		// Each MAC asks twice (record and timeline); refused ones both times.
		return testutil.ToFloat64(a.discovered.refused) >= 2*(n-50)
	})
	if got := testutil.ToFloat64(a.discovered.gauge); got != 50 {
		t.Errorf("kiln_rack_discovered_machines = %v, want 50", got)
	}
	if got := countKeys(t, cli, store.Keys().Discovered("r1", "")); got != 50 {
		t.Errorf("%d discovered records in etcd, want 50", got)
	}
	if got := countKeys(t, cli, store.Keys().Timeline("r1", "discovered-")); got != 50 {
		t.Errorf("%d discovered timelines in etcd, want 50", got)
	}
	if dropped := testutil.ToFloat64(a.events.dropped); dropped != 0 {
		t.Logf("%v events dropped by the bounded buffers", dropped)
	}
	if len(a.events.discovered) > 50 {
		t.Errorf("the in-memory discovered set holds %d MACs", len(a.events.discovered))
	}
	kilntest.Eventually(t, 10*time.Second, "the rack's warning on its timeline", func() bool {
		tl, err := inventory.GetJSON[inventory.Timeline](context.Background(), store, store.Keys().Timeline("r1", RackTimeline))
		return err == nil && len(tl.Events) == 1 && tl.Events[0].Type == EventDiscoveryFull
	})
	if c := strings.Count(logs.String(), "discovered-machines cap reached"); c != 1 {
		t.Errorf("%d cap warnings in the log (want 1, rate-limited):\n%s", c, logs.String())
	}
	st, err := cli.Status(context.Background(), cli.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	if st.DbSizeInUse > 4<<20 {
		t.Errorf("etcd uses %d bytes after the flood", st.DbSizeInUse)
	}
	t.Logf("etcd in use after %d MACs: %d KiB", n, st.DbSizeInUse>>10)
	if _, err := a.DiscoveredLease(context.Background(), macN(n+1)); !errors.Is(err, boot.ErrDiscoveryFull) {
		t.Errorf("DiscoveredLease past the cap: %v", err)
	}
	want := `
# HELP kiln_rack_discovered_machines Unknown MACs the rack records (each on an etcd lease).
# TYPE kiln_rack_discovered_machines gauge
kiln_rack_discovered_machines{rack="r1"} 50
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "kiln_rack_discovered_machines"); err != nil {
		t.Error(err)
	}
}

// Every key of an unknown MAC — its record, its timeline, and keys other
// parts attach with DiscoveredLease (its boot token, its report) — is on
// one lease and vanishes once the MAC stops booting for the TTL; then
// its slot under the cap is free again.
func TestDiscoveredKeysExpire(t *testing.T) {
	a, store, cli, _, _ := discoveryAgent(t, Config{MaxDiscovered: 1, DiscoveredTTL: 2 * time.Second})
	ctx := context.Background()
	mac := "02:00:00:00:00:01"
	name := "discovered-02-00-00-00-00-01"
	a.events.Record(dhcp.Event{Time: time.Now(), Type: dhcp.EventDiscovered, MAC: mac, Subnet: "lab", IP: netip.MustParseAddr("10.0.0.100")})
	a.events.RecordTimeline(name, "http-script", "boot script fetched")
	id, err := a.DiscoveredLease(ctx, mac)
	if err != nil {
		t.Fatal(err)
	}
	token := store.Keys().Token("r1", name)
	if _, err := cli.Put(ctx, token, "hash", clientv3.WithLease(id)); err != nil {
		t.Fatal(err)
	}
	keys := []string{store.Keys().Discovered("r1", mac), store.Keys().Timeline("r1", name), token}
	var rev int64
	kilntest.Eventually(t, 10*time.Second, "the record and timeline written", func() bool {
		for _, k := range keys {
			resp, err := cli.Get(ctx, k)
			if err != nil || len(resp.Kvs) == 0 || clientv3.LeaseID(resp.Kvs[0].Lease) != id {
				return false
			}
			rev = resp.Header.Revision
		}
		return true
	})
	// Another MAC is refused while this one is recorded (cap 1).
	if _, err := a.DiscoveredLease(ctx, "02:00:00:00:00:02"); !errors.Is(err, boot.ErrDiscoveryFull) {
		t.Fatalf("second MAC with cap 1: %v", err)
	}
	// Wait for etcd to delete all three (the lease expires): a watch, no sleep.
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	gone := map[string]bool{}
	for wr := range cli.Watch(wctx, store.Keys().Prefix(), clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypeDelete {
				gone[string(ev.Kv.Key)] = true
			}
		}
		if gone[keys[0]] && gone[keys[1]] && gone[keys[2]] {
			break
		}
	}
	if !(gone[keys[0]] && gone[keys[1]] && gone[keys[2]]) {
		t.Fatalf("keys deleted: %v, want %v", gone, keys)
	}
	// The agent's clock sees the TTL pass too: the slot is free.
	a.discovered.now = func() time.Time { return time.Now().Add(3 * time.Second) }
	if _, err := a.DiscoveredLease(ctx, "02:00:00:00:00:02"); err != nil {
		t.Fatalf("a new MAC after the first expired: %v", err)
	}
}

// A MAC that keeps booting keeps its lease: the same id, kept alive (at
// most every TTL/4, 5 minutes at most).
func TestDiscoveredLeaseRefreshed(t *testing.T) {
	a, _, cli, _, _ := discoveryAgent(t, Config{DiscoveredTTL: 4 * time.Second})
	ctx := context.Background()
	id, err := a.DiscoveredLease(ctx, "02:00:00:00:00:01")
	if err != nil {
		t.Fatal(err)
	}
	kilntest.Eventually(t, 10*time.Second, "the lease's time to run down", func() bool {
		r, err := cli.TimeToLive(ctx, id)
		return err == nil && r.TTL <= 2
	})
	a.discovered.now = func() time.Time { return time.Now().Add(1500 * time.Millisecond) }
	id2, err := a.DiscoveredLease(ctx, "02:00:00:00:00:01")
	if err != nil || id2 != id {
		t.Fatalf("second boot: lease %x (%v), first %x", id2, err, id)
	}
	if r, err := cli.TimeToLive(ctx, id); err != nil || r.TTL < 3 {
		t.Fatalf("the lease was not kept alive: TTL %d (%v)", r.TTL, err)
	}
}

func TestDiscoveredLeaseRefusesABadMAC(t *testing.T) {
	a, _, _, _, _ := discoveryAgent(t, Config{})
	for _, mac := range []string{"", "../../desired/x", "02:00:00:00:00"} {
		if _, err := a.DiscoveredLease(context.Background(), mac); err == nil || !strings.Contains(err.Error(), "not a MAC address") {
			t.Errorf("%q: %v", mac, err)
		}
	}
}

// A DHCP pool warning (an event without a MAC) lands on the rack's own
// timeline, not in discovery.
func TestPoolWarningOnTheRackTimeline(t *testing.T) {
	a, store, cli, _, _ := discoveryAgent(t, Config{})
	a.events.Record(dhcp.Event{Time: time.Now(), Type: dhcp.EventPoolLow, Subnet: "lab"})
	kilntest.Eventually(t, 10*time.Second, "the warning on the rack's timeline", func() bool {
		tl, err := inventory.GetJSON[inventory.Timeline](context.Background(), store, store.Keys().Timeline("r1", RackTimeline))
		return err == nil && len(tl.Events) == 1 && tl.Events[0].Type == dhcp.EventPoolLow && strings.Contains(tl.Events[0].Detail, "subnet=lab")
	})
	if n := countKeys(t, cli, store.Keys().Discovered("", "")); n != 0 {
		t.Errorf("%d discovered records from a pool warning", n)
	}
}
