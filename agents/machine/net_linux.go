package machine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/vishvananda/netlink"
)

// BringUpNetwork sets lo up, brings every other link up, runs DHCPv4 on
// all of them at once (each retrying until the deadline) and configures
// the first lease: the address and, when the server gives a router, the
// default route. The other interfaces stay up without an address (LLDP
// still listens on them).
//
// It uses netlink (github.com/vishvananda/netlink) for links, addresses
// and routes: raw rtnetlink messages would be a few hundred lines of
// encoding that this well-kept package already has right.
func BringUpNetwork(ctx context.Context, log *slog.Logger, opts NetworkOptions) (Lease, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = 60 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()

	links, err := netlink.LinkList()
	if err != nil {
		return Lease{}, fmt.Errorf("list network links: %w", err)
	}
	var names []string
	for _, l := range links {
		a := l.Attrs()
		if a.Flags&net.FlagLoopback != 0 {
			if err := netlink.LinkSetUp(l); err != nil {
				log.Warn("set loopback up", "err", err)
			}
			continue
		}
		if opts.Interfaces != nil && !slices.Contains(opts.Interfaces, a.Name) {
			continue
		}
		if len(a.HardwareAddr) != 6 {
			continue // not Ethernet
		}
		if err := netlink.LinkSetUp(l); err != nil {
			log.Warn("set link up", "interface", a.Name, "err", err)
			continue
		}
		names = append(names, a.Name)
	}
	if len(names) == 0 {
		return Lease{}, errors.New("no Ethernet interface found (is the NIC's driver in the ephemeral image?)")
	}
	if opts.LinksUp != nil {
		opts.LinksUp(names...)
	}
	log.Info("running DHCP", "interfaces", names)

	type result struct {
		iface string
		lease *nclient4.Lease
	}
	got := make(chan result, len(names))
	var wg sync.WaitGroup
	var mu sync.Mutex
	lastErr := map[string]error{}
	for _, name := range names {
		wg.Go(func() {
			l, err := dhcpUntil(ctx, name, log)
			if err != nil {
				mu.Lock()
				lastErr[name] = err
				mu.Unlock()
				return
			}
			got <- result{name, l}
		})
	}
	go func() { wg.Wait(); close(got) }()

	r, ok := <-got
	cancel() // stop the others
	wg.Wait()
	if !ok {
		var errs []error
		for _, n := range names {
			errs = append(errs, fmt.Errorf("%s: %w", n, lastErr[n]))
		}
		return Lease{}, fmt.Errorf("no DHCP lease within %s: %w", opts.Timeout, errors.Join(errs...))
	}
	return configure(r.iface, r.lease.ACK, log)
}

// dhcpUntil asks for a lease on one interface until it gets one or ctx
// ends (links take seconds to get a carrier, servers restart).
func dhcpUntil(ctx context.Context, iface string, log *slog.Logger) (*nclient4.Lease, error) {
	wait := time.Second
	for {
		l, err := dhcpOnce(ctx, iface)
		if err == nil {
			return l, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		log.Debug("DHCP attempt failed", "interface", iface, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, err
		case <-t.C:
		}
		wait = min(wait*2, 8*time.Second)
	}
}

func dhcpOnce(ctx context.Context, iface string) (*nclient4.Lease, error) {
	c, err := nclient4.New(iface, nclient4.WithTimeout(4*time.Second), nclient4.WithRetry(2))
	if err != nil {
		return nil, fmt.Errorf("DHCP client: %w", err)
	}
	defer c.Close()
	return c.Request(ctx, dhcpv4.WithOption(dhcpv4.OptClassIdentifier("kiln-agent")))
}

// configure puts the lease's address on the interface and the default
// route through its router.
func configure(iface string, ack *dhcpv4.DHCPv4, log *slog.Logger) (Lease, error) {
	link, err := netlink.LinkByName(iface)
	if err != nil {
		return Lease{}, fmt.Errorf("configure %s: %w", iface, err)
	}
	mask := ack.SubnetMask()
	if mask == nil {
		mask = ack.YourIPAddr.DefaultMask()
	}
	lease := Lease{Interface: iface, Address: net.IPNet{IP: ack.YourIPAddr.To4(), Mask: mask}, Server: ack.ServerIdentifier()}
	addr := &netlink.Addr{IPNet: &lease.Address}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return Lease{}, fmt.Errorf("add address %s to %s: %w", lease.Address.String(), iface, err)
	}
	if rs := ack.Router(); len(rs) > 0 {
		lease.Router = rs[0]
		_, any4, _ := net.ParseCIDR("0.0.0.0/0")
		route := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: any4, Gw: lease.Router}
		if err := netlink.RouteReplace(route); err != nil {
			return Lease{}, fmt.Errorf("default route via %s on %s: %w", lease.Router, iface, err)
		}
	}
	log.Info("network up", "interface", iface, "address", lease.Address.String(), "router", lease.Router, "dhcp_server", lease.Server)
	return lease, nil
}
