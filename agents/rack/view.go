package rack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"time"

	"github.com/kilnhq/kiln/netboot/dhcp"
	"github.com/kilnhq/kiln/spec"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// viewOf is what a rack serves: its subnets, and every machine interface
// on them. The inventory was validated when applied, so unparsable
// values are skipped rather than reported.
func viewOf(rack string, inv *spec.Inventory, boot dhcp.BootConfig) dhcp.Config {
	cfg := dhcp.Config{Rack: rack, Boot: boot}
	mine := map[string]bool{}
	for _, name := range spec.SortedNames(inv.Subnets) {
		s := inv.Subnets[name]
		if s.Spec.Rack != rack {
			continue
		}
		p, err := netip.ParsePrefix(s.Spec.CIDR)
		if err != nil {
			continue
		}
		sub := dhcp.Subnet{
			Name: name, Prefix: p, Mode: s.Spec.Mode, Domain: s.Spec.Domain,
			MTU: s.Spec.MTU, LeaseTime: s.Spec.LeaseTime.Duration,
			Gateway: addr(s.Spec.Gateway),
		}
		for _, d := range s.Spec.DNS {
			if a := addr(d); a.IsValid() {
				sub.DNS = append(sub.DNS, a)
			}
		}
		if r := s.Spec.DynamicRange; r != nil {
			sub.Dynamic = &dhcp.Range{Start: addr(r.Start), End: addr(r.End)}
		}
		for _, r := range s.Spec.AllowedRelays {
			if a := addr(r); a.IsValid() {
				sub.AllowedRelays = append(sub.AllowedRelays, a)
			}
		}
		for _, r := range s.Spec.Reserved {
			sub.Reserved = append(sub.Reserved, dhcp.Range{Start: addr(r.Start), End: addr(r.End)})
		}
		cfg.Subnets = append(cfg.Subnets, sub)
		mine[name] = true
	}
	for _, name := range spec.SortedNames(inv.Machines) {
		m := inv.Machines[name]
		for _, ifc := range m.Spec.Interfaces {
			if !mine[ifc.Subnet] {
				continue
			}
			mac, err := net.ParseMAC(ifc.MAC)
			if err != nil {
				continue
			}
			cfg.Hosts = append(cfg.Hosts, dhcp.Host{Machine: name, MAC: mac, Subnet: ifc.Subnet, IP: addr(ifc.IP), Hostname: name})
		}
	}
	sort.SliceStable(cfg.Hosts, func(i, j int) bool { return cfg.Hosts[i].MAC.String() < cfg.Hosts[j].MAC.String() })
	return cfg
}

// addr parses an address; "", "auto" and garbage give the zero Addr.
func addr(s string) netip.Addr {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}
	}
	return a
}

// Ready reports whether the agent serves its rack as it should: it leads,
// or it is a standby whose view of the desired state is current (loaded,
// and its last read and watch did not fail), ready to take over. When not,
// the error says why in one line.
func (a *Agent) Ready() error {
	select {
	case <-a.ready:
	default:
		return errors.New("the rack view is not loaded yet")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.leading {
		return nil
	}
	if a.stale != nil {
		return fmt.Errorf("standby with a stale view: %w", a.stale)
	}
	return nil
}

// setStale records whether the view follows etcd (err nil) or why not.
func (a *Agent) setStale(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stale = err
}

// progressEvery spaces the agent's requests for a watch progress report
// while it waits for its view to reach a revision.
const progressEvery = time.Second

// machineSoon returns the machine from the agent's copy of the inventory.
// A task written at revision rev may name a machine just committed, before
// this agent's watch brings it: while the view is older than rev, it waits
// (up to wait) for the view to catch up, asking etcd for a watch progress
// report so that a view with nothing to catch up is known current. A view
// at or past rev without the machine is the answer.
func (a *Agent) machineSoon(ctx context.Context, name string, rev int64, wait time.Duration) (*spec.Machine, bool) {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	tick := time.NewTicker(progressEvery)
	defer tick.Stop()
	for asked := false; ; {
		a.mu.Lock()
		m, ok := a.inv.Machines[name]
		changed, current := a.changed, a.viewRev >= rev
		a.mu.Unlock()
		if ok || current {
			return m, ok
		}
		if !asked {
			// The watches run with WithRequireLeader: so must the request,
			// to reach their stream.
			a.requestProgress(ctx)
			asked = true
		}
		select {
		case <-changed:
		case <-tick.C:
			asked = false
		case <-deadline.C:
			return nil, false
		case <-ctx.Done():
			return nil, false
		}
	}
}

// requestProgress asks etcd for a progress report on the agent's watches.
// The watches run with WithRequireLeader: so must the request, to reach
// their stream. It may block while no such stream runs: bounded.
func (a *Agent) requestProgress(ctx context.Context) {
	rctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), progressEvery)
	defer cancel()
	if err := a.store.Client().RequestProgress(rctx); err != nil && ctx.Err() == nil {
		a.log.Debug("cannot ask etcd for watch progress", "err", err)
	}
}

// viewCurrentAt records that the view is current at rev: a watch progress
// report saw no change of the desired state up to it.
func (a *Agent) viewCurrentAt(rev int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if rev <= a.viewRev {
		return
	}
	a.viewRev = rev
	close(a.changed)
	a.changed = make(chan struct{})
}
