package rack

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/netboot/dhcp"
	"github.com/prometheus/client_golang/prometheus"
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

	discovered map[string]*inventory.Discovered // by MAC, this agent's knowledge
}

func newEventLog(rack string, store *inventory.Store, log *slog.Logger, dropped prometheus.Counter) *eventLog {
	return &eventLog{rack: rack, store: store, log: log, ch: make(chan dhcp.Event, 8192), other: make(chan machineEvent, 1024), dropped: dropped,
		every: 250 * time.Millisecond, discovered: map[string]*inventory.Discovered{}}
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
		d := l.discovered[ev.MAC]
		isNew := d == nil
		if isNew {
			if ev.Type != dhcp.EventSeen && ev.Type != dhcp.EventDiscovered {
				continue
			}
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
		if err := l.store.PutDiscovered(ctx, dedupe(changed)); err != nil {
			l.log.Warn("could not record discovered MACs", "count", len(changed), "err", err)
		}
	}
	for machine, evs := range timelines {
		if err := l.store.AppendTimeline(ctx, machine, evs...); err != nil {
			l.log.Warn("could not record boot timeline", "machine", machine, "err", err)
		}
	}
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
