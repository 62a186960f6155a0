package dhcp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/kilnhq/kiln/spec/kilntest"
	"github.com/prometheus/client_golang/prometheus"
)

// memStore is a LeaseStore in memory that counts its saves, and can fail
// or block them.
type memStore struct {
	mu      sync.Mutex
	leases  map[netip.Addr]Lease
	batches [][]Lease
	fail    error
	gate    chan struct{} // when set, Save waits for it to be closed
	entered chan struct{} // receives one value per Save call (when set)
}

func newMemStore() *memStore { return &memStore{leases: map[netip.Addr]Lease{}} }

func (m *memStore) Save(ctx context.Context, leases []Lease) error {
	m.mu.Lock()
	gate, entered := m.gate, m.entered
	m.mu.Unlock()
	if entered != nil {
		entered <- struct{}{}
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.batches = append(m.batches, slices.Clone(leases))
	if m.fail != nil {
		return m.fail
	}
	for _, l := range leases {
		m.leases[l.IP] = l
	}
	return nil
}

func (m *memStore) setFail(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.fail = err
}

func (m *memStore) saves() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.batches)
}

func (m *memStore) get(ip string) (Lease, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	l, ok := m.leases[netip.MustParseAddr(ip)]
	return l, ok
}

func (m *memStore) all() []Lease {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Lease
	for _, l := range m.leases {
		out = append(out, l)
	}
	return out
}

// recorder is an EventSink that keeps every event.
type recorder struct {
	mu     sync.Mutex
	events []Event
}

func (r *recorder) Record(e Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

func (r *recorder) of(typ, mac string) []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Event
	for _, e := range r.events {
		if e.Type == typ && (mac == "" || e.MAC == mac) {
			out = append(out, e)
		}
	}
	return out
}

var (
	macVM1     = "52:54:00:42:00:01" // vm-1: static 10.42.0.11
	macVM2     = "52:54:00:42:00:02" // vm-2: allocated once
	macVM3     = "52:54:00:50:00:03" // vm-3: static 10.50.0.20 behind the relay
	macUnknown = "52:54:00:99:00:01"
)

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ip(s string) netip.Addr    { return netip.MustParseAddr(s) }

// testConfig is a rack with a managed subnet (lab, on eth0), a proxy
// subnet (site, on eth1) and a relay subnet (remote, behind 10.50.0.1,
// reached through uplink).
func testConfig() Config {
	return Config{
		Rack: "r1",
		Subnets: []Subnet{
			{Name: "lab", Prefix: pfx("10.42.0.0/24"), Mode: ModeManaged, Gateway: ip("10.42.0.1"),
				DNS: []netip.Addr{ip("10.42.0.1"), ip("10.42.0.2")}, Domain: "lab.example", MTU: 1450, LeaseTime: time.Hour,
				Dynamic:  &Range{ip("10.42.0.100"), ip("10.42.0.199")},
				Reserved: []Range{{ip("10.42.0.2"), ip("10.42.0.9")}}},
			{Name: "site", Prefix: pfx("192.168.10.0/24"), Mode: ModeProxy, LeaseTime: time.Hour},
			{Name: "remote", Prefix: pfx("10.50.0.0/24"), Mode: ModeRelay, Gateway: ip("10.50.0.1"), MTU: 1500,
				LeaseTime: 30 * time.Minute, Dynamic: &Range{ip("10.50.0.100"), ip("10.50.0.150")}},
		},
		Hosts: []Host{
			{Machine: "vm-1", MAC: mustMAC(macVM1), Subnet: "lab", IP: ip("10.42.0.11"), Hostname: "vm-1"},
			{Machine: "vm-2", MAC: mustMAC(macVM2), Subnet: "lab", Hostname: "vm-2"},
			{Machine: "vm-3", MAC: mustMAC(macVM3), Subnet: "remote", IP: ip("10.50.0.20"), Hostname: "vm-3"},
			{Machine: "pxe-1", MAC: mustMAC("52:54:00:10:00:01"), Subnet: "site", Hostname: "pxe-1"},
		},
	}
}

var (
	onLab    = Arrival{Interface: "eth0", Addrs: []netip.Prefix{pfx("10.42.0.5/24")}, Local: ip("255.255.255.255")}
	onSite   = Arrival{Interface: "eth1", Addrs: []netip.Prefix{pfx("192.168.10.5/24")}, Local: ip("255.255.255.255")}
	onUplink = Arrival{Interface: "uplink", Addrs: []netip.Prefix{pfx("10.0.0.5/24")}, Local: ip("10.0.0.5"),
		Peer: netip.MustParseAddrPort("10.0.0.1:67")}
	onOther = Arrival{Interface: "mgmt", Addrs: []netip.Prefix{pfx("172.16.0.5/24")}, Local: ip("255.255.255.255")}
)

// harness is a server whose core runs (the committer) without sockets.
type harness struct {
	t      testing.TB
	s      *Server
	store  *memStore
	events *recorder
	clock  *kilntest.Clock
	reg    *prometheus.Registry
	ctx    context.Context
}

func newHarness(t testing.TB, cfg Config, known []Lease, opts Options) *harness {
	t.Helper()
	h := &harness{t: t, store: newMemStore(), events: &recorder{}, reg: prometheus.NewRegistry(),
		clock: kilntest.NewClock(time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC))}
	s, err := New(cfg, known, h.store, h.events, opts, NewMetrics(h.reg), nil)
	if err != nil {
		t.Fatal(err)
	}
	s.now = h.clock.Now
	stats := s.poolStats
	s.m.pools.source.Store(&stats)
	h.s = s
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.commit.run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	h.ctx = ctx
	return h
}

// roundtrip encodes and decodes a packet, as the wire would.
func roundtrip(t testing.TB, p *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
	t.Helper()
	q, err := dhcpv4.FromBytes(p.ToBytes())
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	return q
}

func (h *harness) handle(req *dhcpv4.DHCPv4, in Arrival) (*dhcpv4.DHCPv4, netip.AddrPort) {
	h.t.Helper()
	r, dst := h.s.Handle(h.ctx, roundtrip(h.t, req), in)
	if r != nil {
		r = roundtrip(h.t, r)
	}
	return r, dst
}

func discover(mac string, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	d, err := dhcpv4.NewDiscovery(mustMAC(mac), mods...)
	if err != nil {
		panic(err)
	}
	return d
}

func requestFor(offer *dhcpv4.DHCPv4, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	r, err := dhcpv4.NewRequestFromOffer(offer, mods...)
	if err != nil {
		panic(err)
	}
	r.GatewayIPAddr = offer.GatewayIPAddr
	return r
}

func message(mt dhcpv4.MessageType, mac string, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	p, err := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithHwAddr(mustMAC(mac)), dhcpv4.WithMessageType(mt)}, mods...)...)
	if err != nil {
		panic(err)
	}
	return p
}

// dora runs DISCOVER/OFFER/REQUEST/ACK and returns the ACK (nil if any
// step got no answer).
func (h *harness) dora(mac string, in Arrival, mods ...dhcpv4.Modifier) (offer, ack *dhcpv4.DHCPv4) {
	h.t.Helper()
	offer, _ = h.handle(discover(mac, mods...), in)
	if offer == nil {
		return nil, nil
	}
	ack, _ = h.handle(requestFor(offer, mods...), in)
	return offer, ack
}

func mt(p *dhcpv4.DHCPv4) dhcpv4.MessageType {
	if p == nil {
		return dhcpv4.MessageTypeNone
	}
	return p.MessageType()
}

func yiaddr(p *dhcpv4.DHCPv4) string {
	if p == nil {
		return "<no reply>"
	}
	return p.YourIPAddr.String()
}

var errDown = errors.New("etcd is away")

// pxe are the options of a PXE ROM of the given arch.
func pxe(arch uint16) []dhcpv4.Modifier {
	return []dhcpv4.Modifier{
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier(fmt.Sprintf("PXEClient:Arch:%05d:UNDI:002001", arch))),
		dhcpv4.WithGeneric(dhcpv4.OptionClientSystemArchitectureType, []byte{byte(arch >> 8), byte(arch)}),
		dhcpv4.WithGeneric(dhcpv4.OptionClientNetworkInterfaceIdentifier, []byte{1, 2, 1}),
		dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, append([]byte{0}, make([]byte, 16)...)),
	}
}

func httpBoot(arch uint16) []dhcpv4.Modifier {
	return []dhcpv4.Modifier{
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("HTTPClient:Arch:00016:UNDI:003001")),
		dhcpv4.WithGeneric(dhcpv4.OptionClientSystemArchitectureType, []byte{byte(arch >> 8), byte(arch)}),
	}
}

var ipxeUserClass = dhcpv4.WithGeneric(dhcpv4.OptionUserClassInformation, []byte("iPXE"))

func relayed(giaddr, circuit string) []dhcpv4.Modifier {
	return []dhcpv4.Modifier{
		dhcpv4.WithGatewayIP(net.ParseIP(giaddr).To4()),
		dhcpv4.WithOption(dhcpv4.OptRelayAgentInfo(
			dhcpv4.OptGeneric(dhcpv4.AgentCircuitIDSubOption, []byte(circuit)),
			dhcpv4.OptGeneric(dhcpv4.AgentRemoteIDSubOption, []byte{0xde, 0xad, 0xbe, 0xef}),
		)),
	}
}
