package netlab

import (
	"fmt"
	"net/netip"
	"testing"
)

// Addresses of the Rack topology (they exist only inside its namespaces).
var (
	RackPrefix   = netip.MustParsePrefix("10.42.0.0/24")
	ServerIP     = netip.MustParseAddr("10.42.0.1")   // srv's eth0
	RelayUpIP    = netip.MustParseAddr("10.42.0.254") // rel's "up", on the rack's L2
	RemotePrefix = netip.MustParsePrefix("10.43.0.0/24")
	RelayIP      = netip.MustParseAddr("10.43.0.1") // rel's "down": the giaddr of relayed requests
)

// RackNet is a rack's L2 segment: a switch namespace holding a bridge, the
// server namespace and the client namespace plugged into it, and more
// hosts, client interfaces and QEMU taps on demand. RelayRack adds a
// routed segment behind a relay.
//
//	srv  eth0 10.42.0.1/24 ──┐
//	cli  eth0 (DHCP)       ──┤ sw: br0 (pure L2, no address)
//	     AddHost / AddClientIface / Tap ──┘
//	rel  up 10.42.0.254/24 ──┘   down 10.43.0.1/24 ── cli2 eth0 (DHCP)   [RelayRack]
type RackNet struct {
	Lab    *Lab
	Switch *NS    // holds Bridge; QEMU runs here (its taps are on Bridge)
	Bridge string // "br0"
	Srv    *NS    // the DHCP server / rack agent
	Cli    *NS    // clients on the rack's L2
	Iface  string // "eth0": the name of srv's, cli's and cli2's interface
	Rel    *NS    // RelayRack: the router running the relay (ip_forward on)
	Cli2   *NS    // RelayRack: clients on the remote segment
	Up     string // RelayRack: rel's interface on the rack's L2 ("up")
	Down   string // RelayRack: rel's interface toward cli2 ("down")
	Prefix netip.Prefix
	Server netip.Addr

	ports int
}

// Rack builds the rack topology for the test.
func Rack(t testing.TB) *RackNet {
	t.Helper()
	l := New(t)
	r := &RackNet{Lab: l, Bridge: "br0", Iface: "eth0", Prefix: RackPrefix, Server: ServerIP}
	r.Switch = l.NewNS("sw")
	r.Switch.Bridge(r.Bridge)
	r.Srv = r.AddHost("srv", netip.PrefixFrom(ServerIP, RackPrefix.Bits()).String())
	r.Cli = r.AddHost("cli", "")
	return r
}

// RelayRack is Rack plus a router rel (up on the rack's L2, down toward
// cli2 on 10.43.0.0/24, forwarding on) and srv's route to 10.43.0.0/24 via
// rel, so a server in srv can answer the relay at its giaddr. No relay runs
// yet: start one in Rel (Dhcrelay(r.Rel, []string{r.Up}, []string{r.Down},
// []string{ServerIP.String()})).
func RelayRack(t testing.TB) *RackNet {
	t.Helper()
	r := Rack(t)
	l := r.Lab
	r.Up, r.Down = "up", "down"
	r.Rel = l.NewNS("rel")
	r.connect(r.Rel, r.Up)
	r.Rel.AddAddr(r.Up, netip.PrefixFrom(RelayUpIP, RackPrefix.Bits()).String())
	r.Cli2 = l.NewNS("cli2")
	l.Veth(r.Rel, r.Down, r.Cli2, r.Iface)
	r.Rel.AddAddr(r.Down, netip.PrefixFrom(RelayIP, RemotePrefix.Bits()).String())
	r.Rel.Forwarding()
	r.Srv.AddRoute(RemotePrefix.String(), RelayUpIP.String())
	return r
}

// connect plugs a new veth (iface in n) into the switch's bridge.
func (r *RackNet) connect(n *NS, iface string) {
	r.Lab.T.Helper()
	r.ports++
	port := fmt.Sprintf("p%d", r.ports)
	r.Lab.Veth(n, iface, r.Switch, port)
	r.Switch.Attach(port, r.Bridge)
}

// AddHost creates a namespace with an eth0 on the rack's L2, with the
// address (CIDR) unless empty: a second server (failover), a proxyDHCP
// server, an HTTP server...
func (r *RackNet) AddHost(short, cidr string) *NS {
	r.Lab.T.Helper()
	n := r.Lab.NewNS(short)
	r.connect(n, r.Iface)
	if cidr != "" {
		n.AddAddr(r.Iface, cidr)
	}
	return n
}

// AddClientIface adds an interface named name to cli, on the rack's L2,
// with the MAC unless empty: one per concurrent client.
func (r *RackNet) AddClientIface(name, mac string) string {
	r.Lab.T.Helper()
	r.connect(r.Cli, name)
	if mac != "" {
		r.Cli.SetMAC(name, mac)
	}
	return name
}

// Tap adds a tap on the rack's L2 (in the switch namespace) for a QEMU
// guest; start QEMU with QEMU(r.Switch, ...).
func (r *RackNet) Tap(name string) string {
	r.Lab.T.Helper()
	r.Switch.Tap(name, r.Bridge)
	return name
}

// Addresses of the Pair topology: a /10 so load generators never exhaust
// the pool (perfdhcp simulates up to millions of clients).
var (
	PairPrefix   = netip.MustParsePrefix("10.64.0.0/10")
	PairServerIP = netip.MustParseAddr("10.64.0.1")
	PairClientIP = netip.MustParseAddr("10.64.0.2")
	PairPoolFrom = netip.MustParseAddr("10.64.1.0")
	PairPoolTo   = netip.MustParseAddr("10.127.255.254")
)

// PairNet is two namespaces joined by one veth pair, for benchmarks:
// srv eth0 10.64.0.1/10 ── cli eth0 10.64.0.2/10. perfdhcp in cli acts as
// a relay with giaddr 10.64.0.2, so the server's subnet is the /10.
type PairNet struct {
	Lab    *Lab
	Srv    *NS
	Cli    *NS
	Iface  string // "eth0" on both sides
	Prefix netip.Prefix
	Server netip.Addr
	Client netip.Addr
	// RcvBuf is net.core.rmem_max in cli (raised to 4 MiB where the
	// kernel lets a namespace do it; see NS.RaiseRcvBuf).
	RcvBuf int
}

// Pair builds the benchmark topology.
func Pair(t testing.TB) *PairNet {
	t.Helper()
	l := New(t)
	p := &PairNet{Lab: l, Iface: "eth0", Prefix: PairPrefix, Server: PairServerIP, Client: PairClientIP}
	p.Srv = l.NewNS("srv")
	p.Cli = l.NewNS("cli")
	l.Veth(p.Srv, p.Iface, p.Cli, p.Iface)
	p.Srv.AddAddr(p.Iface, netip.PrefixFrom(PairServerIP, PairPrefix.Bits()).String())
	p.Cli.AddAddr(p.Iface, netip.PrefixFrom(PairClientIP, PairPrefix.Bits()).String())
	var err error
	for _, n := range []*NS{p.Cli, p.Srv} {
		m, e := n.RaiseRcvBuf(4 << 20)
		if n == p.Cli {
			p.RcvBuf, err = m, e
		}
	}
	if err != nil {
		t.Logf("netlab: %v", err)
	}
	return p
}

// AddrRange is an inclusive range of addresses.
type AddrRange struct{ From, To netip.Addr }

// Range returns the inclusive range from..to.
func Range(from, to netip.Addr) AddrRange { return AddrRange{from, to} }

// Contains reports whether a is in the range.
func (r AddrRange) Contains(a netip.Addr) bool {
	return r.From.Compare(a) <= 0 && a.Compare(r.To) <= 0
}
