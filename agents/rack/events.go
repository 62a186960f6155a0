package rack

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/netboot/boot"
	"github.com/kilnhq/kiln/netboot/dhcp"
	"github.com/kilnhq/kiln/spec"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// eventLog batches DHCP events into machines' timelines and discovered
// records. Record never blocks: when the buffer is full, events are
// dropped and counted.
type eventLog struct {
	rack  string
	store *inventory.Store
	log   *slog.Logger
	ch    chan dhcp.Event
	// other carries timeline events of the boot servers (TFTP, HTTP).
	other   chan machineEvent
	dropped prometheus.Counter
	every   time.Duration
	// lease is Agent.DiscoveredLease: the lease of an unknown MAC's keys.
	lease func(ctx context.Context, mac string) (clientv3.LeaseID, error)

	// discovered is this agent's knowledge of unknown MACs, by MAC: at
	// most max, the ones whose lease ran out forgotten first.
	discovered map[string]*inventory.Discovered
	max        int
	known      func(mac string) bool
}

func newEventLog(rack string, store *inventory.Store, log *slog.Logger, dropped prometheus.Counter,
	set *discoveredSet) *eventLog {
	return &eventLog{rack: rack, store: store, log: log, ch: make(chan dhcp.Event, 8192), other: make(chan machineEvent, 1024), dropped: dropped,
		every: 250 * time.Millisecond, discovered: map[string]*inventory.Discovered{},
		lease: set.lease, max: set.max, known: set.known}
}

type machineEvent struct {
	machine string
	ev      inventory.TimelineEvent
}

// RecordTimeline adds a boot-server event to a machine's timeline.
func (l *eventLog) RecordTimeline(machine, typ, detail string) {
	select {
	case l.other <- machineEvent{machine, inventory.TimelineEvent{Time: time.Now().UTC(), Type: typ, Detail: detail}}:
	default:
		l.dropped.Inc()
	}
}

func (l *eventLog) Record(ev dhcp.Event) {
	select {
	case l.ch <- ev:
	default:
		l.dropped.Inc()
	}
}

// Run writes batches until ctx ends, then flushes what it has.
func (l *eventLog) Run(ctx context.Context) error {
	t := time.NewTicker(l.every)
	defer t.Stop()
	var batch []dhcp.Event
	var others []machineEvent
	for {
		select {
		case me := <-l.other:
			others = append(others, me)
			continue
		case ev := <-l.ch:
			batch = append(batch, ev)
			if len(batch) < 4096 {
				continue
			}
		case <-t.C:
		case <-ctx.Done():
			for {
				select {
				case ev := <-l.ch:
					batch = append(batch, ev)
					continue
				default:
				}
				break
			}
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			l.flush(fctx, batch, others)
			cancel()
			return nil
		}
		if len(batch) > 0 || len(others) > 0 {
			l.flush(ctx, batch, others)
			batch, others = batch[:0], others[:0]
		}
	}
}

func (l *eventLog) flush(ctx context.Context, batch []dhcp.Event, others []machineEvent) {
	timelines := map[string][]inventory.TimelineEvent{}
	for _, me := range others {
		timelines[me.machine] = append(timelines[me.machine], me.ev)
	}
	var changed []inventory.Discovered
	for _, ev := range batch {
		if ev.Machine != "" {
			timelines[ev.Machine] = append(timelines[ev.Machine], inventory.TimelineEvent{Time: ev.Time, Type: ev.Type, Detail: detail(ev)})
			continue
		}
		if ev.MAC == "" { // the rack's own: a pool nearly or fully used
			timelines[RackTimeline] = append(timelines[RackTimeline], inventory.TimelineEvent{Time: ev.Time, Type: ev.Type, Detail: "warning: " + detail(ev)})
			continue
		}
		d := l.discovered[ev.MAC]
		isNew := d == nil
		if isNew {
			if ev.Type != dhcp.EventSeen && ev.Type != dhcp.EventDiscovered {
				continue
			}
			l.makeRoom()
			d = &inventory.Discovered{MAC: ev.MAC, Rack: l.rack, FirstSeen: ev.Time}
			l.discovered[ev.MAC] = d
		}
		before := *d
		d.LastSeen = ev.Time
		if ev.Subnet != "" {
			d.Subnet = ev.Subnet
		}
		if ev.IP.IsValid() && (ev.Type == dhcp.EventAcked || ev.Type == dhcp.EventDiscovered) {
			d.IP = ev.IP.String()
		}
		if ev.Arch != "" {
			d.Arch = ev.Arch
		}
		if ev.VendorClass != "" {
			d.VendorClass = ev.VendorClass
		}
		if ev.CircuitID != "" {
			d.CircuitID = ev.CircuitID
		}
		if ev.Relay.IsValid() {
			d.Relay = ev.Relay.String()
		}
		// Last-seen alone is not worth a write per packet: write when
		// something else changed, or once a minute.
		b := before
		b.LastSeen = d.LastSeen
		if isNew || b != *d || d.LastSeen.Sub(before.LastSeen) > time.Minute {
			changed = append(changed, *d)
		}
	}
	if len(changed) > 0 {
		l.putDiscovered(ctx, dedupe(changed))
	}
	for machine, evs := range timelines {
		lease := clientv3.NoLease
		if mac, ok := spec.DiscoveredMAC(machine); ok {
			id, err := l.lease(ctx, mac)
			if err != nil {
				if !errors.Is(err, boot.ErrDiscoveryFull) {
					l.log.Warn("could not record boot timeline", "machine", machine, "err", err)
				}
				continue
			}
			lease = id
		}
		if err := l.store.AppendTimeline(ctx, l.rack, machine, lease, evs...); err != nil {
			l.log.Warn("could not record boot timeline", "machine", machine, "err", err)
		}
	}
}

// putDiscovered writes records, each on its MAC's lease; a MAC refused
// by the cap is forgotten.
func (l *eventLog) putDiscovered(ctx context.Context, ds []inventory.Discovered) {
	leases := make(map[string]clientv3.LeaseID, len(ds))
	keep := ds[:0]
	for _, d := range ds {
		id, err := l.lease(ctx, d.MAC)
		switch {
		case errors.Is(err, boot.ErrDiscoveryFull):
			delete(l.discovered, d.MAC)
			continue
		case err != nil:
			l.log.Warn("could not record a discovered MAC", "mac", d.MAC, "err", err)
			continue
		}
		leases[d.MAC] = id
		keep = append(keep, d)
	}
	if err := l.store.PutDiscovered(ctx, keep, leases); err != nil {
		l.log.Warn("could not record discovered MACs", "count", len(keep), "err", err)
	}
}

// makeRoom keeps the in-memory discovered set under the cap: MACs whose
// lease ran out are forgotten.
func (l *eventLog) makeRoom() {
	if len(l.discovered) < l.max {
		return
	}
	for mac := range l.discovered {
		if !l.known(mac) {
			delete(l.discovered, mac)
		}
	}
}

// warn records a rack warning on the rack's timeline.
func (l *eventLog) warn(typ, msg string) {
	l.RecordTimeline(RackTimeline, typ, "warning: "+msg)
}

// dedupe keeps the last record of each MAC.
func dedupe(ds []inventory.Discovered) []inventory.Discovered {
	idx := map[string]int{}
	var out []inventory.Discovered
	for _, d := range ds {
		if i, ok := idx[d.MAC]; ok {
			out[i] = d
			continue
		}
		idx[d.MAC] = len(out)
		out = append(out, d)
	}
	return out
}

func detail(ev dhcp.Event) string {
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	add("mac", ev.MAC)
	if ev.IP.IsValid() {
		add("ip", ev.IP.String())
	}
	add("subnet", ev.Subnet)
	add("arch", ev.Arch)
	add("vendor", ev.VendorClass)
	add("user_class", ev.UserClass)
	add("circuit", ev.CircuitID)
	if ev.Relay.IsValid() {
		add("relay", ev.Relay.String())
	}
	return strings.Join(parts, " ")
}
