package rack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/netboot/boot"
	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Discovery bounds.
const (
	DefaultDiscoveredTTL = 24 * time.Hour
	DefaultMaxDiscovered = 1024
	// maxRefreshEvery is the most often a MAC's lease is kept alive.
	maxRefreshEvery = 5 * time.Minute
	// fullWarnEvery spaces the warnings of a full discovered set.
	fullWarnEvery = time.Minute
)

// RackTimeline is the timeline name of the rack's own warnings (a name
// no machine can have: machine names are DNS labels).
const RackTimeline = "_rack"

// EventDiscoveryFull is the rack timeline's warning that the rack
// records no more unknown MACs.
const EventDiscoveryFull = "discovery-full"

// discoveredSet is the rack's bounded knowledge of unknown MACs: each has
// one etcd lease that every key of that MAC is attached to.
type discoveredSet struct {
	rack  string
	store *inventory.Store
	log   *slog.Logger
	ttl   time.Duration
	max   int
	now   func() time.Time
	// warn records a rack warning on the rack's timeline.
	warn func(typ, detail string)

	gauge   prometheus.Gauge
	refused prometheus.Counter

	mu       sync.Mutex
	loaded   bool
	byMAC    map[string]*discLease
	lastWarn time.Time
}

type discLease struct {
	id        clientv3.LeaseID
	refreshed time.Time // last grant or keep-alive
}

func newDiscoveredSet(rack string, store *inventory.Store, ttl time.Duration, max int, reg prometheus.Registerer, log *slog.Logger) *discoveredSet {
	if ttl <= 0 {
		ttl = DefaultDiscoveredTTL
	}
	if max <= 0 {
		max = DefaultMaxDiscovered
	}
	d := &discoveredSet{rack: rack, store: store, log: log, ttl: ttl, max: max, now: time.Now, byMAC: map[string]*discLease{},
		warn: func(string, string) {},
		gauge: prometheus.NewGauge(prometheus.GaugeOpts{Name: "kiln_rack_discovered_machines",
			Help: "Unknown MACs the rack records (each on an etcd lease).", ConstLabels: prometheus.Labels{"rack": rack}}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{Name: "kiln_rack_discovered_refused_total",
			Help: "Unknown MACs not recorded because the rack's discovered-machines cap was reached.", ConstLabels: prometheus.Labels{"rack": rack}}),
	}
	reg.MustRegister(d.gauge, d.refused)
	return d
}

// refreshEvery is how often a booting MAC's lease is kept alive.
func (d *discoveredSet) refreshEvery() time.Duration { return min(d.ttl/4, maxRefreshEvery) }

// DiscoveredLease returns the etcd lease every key of an unknown MAC is
// attached to, granting or refreshing it; an error wrapping
// boot.ErrDiscoveryFull when the rack's discovered-machines cap is reached.
func (a *Agent) DiscoveredLease(ctx context.Context, mac string) (clientv3.LeaseID, error) {
	return a.discovered.lease(ctx, mac)
}

// lease is DiscoveredLease. The set's lock is held across the etcd calls
// so that one MAC never gets two leases; callers bound them with ctx.
func (d *discoveredSet) lease(ctx context.Context, mac string) (clientv3.LeaseID, error) {
	hw, err := net.ParseMAC(mac)
	if err != nil {
		return clientv3.NoLease, fmt.Errorf("discovered lease: %q is not a MAC address", mac)
	}
	mac = hw.String()
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.loaded {
		if err := d.load(ctx); err != nil {
			return clientv3.NoLease, err
		}
	}
	now := d.now()
	cli := d.store.Client()
	if e := d.byMAC[mac]; e != nil && now.Sub(e.refreshed) < d.ttl {
		if now.Sub(e.refreshed) < d.refreshEvery() {
			return e.id, nil
		}
		_, err := cli.KeepAliveOnce(ctx, e.id)
		switch {
		case err == nil:
			e.refreshed = now
			return e.id, nil
		case !errors.Is(err, rpctypes.ErrLeaseNotFound):
			return clientv3.NoLease, fmt.Errorf("refresh the lease of discovered MAC %s: %w", mac, err)
		}
		delete(d.byMAC, mac) // expired in etcd: its keys are gone, start afresh
	}
	d.evict(now)
	if len(d.byMAC) >= d.max {
		d.refused.Inc()
		d.full(mac, now)
		return clientv3.NoLease, fmt.Errorf("record unknown MAC %s on rack %s (%d recorded): %w", mac, d.rack, len(d.byMAC), boot.ErrDiscoveryFull)
	}
	resp, err := cli.Grant(ctx, int64(d.ttl/time.Second))
	if err != nil {
		return clientv3.NoLease, fmt.Errorf("grant a lease to discovered MAC %s: %w", mac, err)
	}
	d.byMAC[mac] = &discLease{id: resp.ID, refreshed: now}
	d.gauge.Set(float64(len(d.byMAC)))
	return resp.ID, nil
}

// load learns the MACs this rack already recorded (by another agent, or
// before a restart), with their leases, so that the cap holds across
// leaders. d.mu is held.
func (d *discoveredSet) load(ctx context.Context) error {
	resp, err := d.store.Client().Get(ctx, d.store.Keys().Discovered(d.rack, ""), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return fmt.Errorf("read the rack's discovered MACs: %w", err)
	}
	now := d.now()
	for _, kv := range resp.Kvs {
		_, mac, ok := d.store.Keys().SplitDiscovered(string(kv.Key))
		if kv.Lease == 0 || !ok {
			continue
		}
		// Its time left is unknown: assume a full TTL; a keep-alive of a
		// lease already gone starts afresh.
		d.byMAC[mac] = &discLease{id: clientv3.LeaseID(kv.Lease), refreshed: now}
	}
	d.loaded = true
	d.gauge.Set(float64(len(d.byMAC)))
	return nil
}

// evict forgets MACs whose lease has run out. d.mu is held.
func (d *discoveredSet) evict(now time.Time) {
	for mac, e := range d.byMAC {
		if now.Sub(e.refreshed) >= d.ttl {
			delete(d.byMAC, mac)
		}
	}
	d.gauge.Set(float64(len(d.byMAC)))
}

// full warns that the cap is reached, once a minute at most. d.mu is held.
func (d *discoveredSet) full(mac string, now time.Time) {
	if !d.lastWarn.IsZero() && now.Sub(d.lastWarn) < fullWarnEvery {
		return
	}
	d.lastWarn = now
	msg := fmt.Sprintf("discovered-machines cap of %d reached: unknown MACs such as %s are not recorded until recorded ones stop booting for %s", d.max, mac, d.ttl)
	d.log.Warn("discovered-machines cap reached; new unknown MACs are not recorded", "cap", d.max, "mac", mac, "ttl", d.ttl)
	d.warn(EventDiscoveryFull, msg)
}

// known reports whether mac is recorded (its lease not run out).
func (d *discoveredSet) known(mac string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	e := d.byMAC[strings.ToLower(mac)]
	return e != nil && d.now().Sub(e.refreshed) < d.ttl
}
