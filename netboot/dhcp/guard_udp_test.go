//go:build linux

package dhcp

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/kilnhq/kiln/spec/kilntest"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// relayLab is a relay subnet on loopback served by a server bound to lo:
// the relay agent is 127.0.0.2 (the only allowed relay), an attacker
// sends from 127.0.0.3.
func relayLab(t *testing.T, opts Options) (r *running, relay, attacker *net.UDPConn, server string) {
	t.Helper()
	port := freePort(t)
	cfg := Config{Rack: "r1", Subnets: []Subnet{{Name: "loop", Prefix: pfx("127.0.0.0/8"), Mode: ModeRelay,
		Gateway: ip("127.0.0.2"), LeaseTime: time.Hour, Dynamic: &Range{ip("127.0.0.100"), ip("127.0.0.150")},
		AllowedRelays: []netip.Addr{ip("127.0.0.2")}}}}
	relay = peerSocket(t, fmt.Sprintf("127.0.0.2:%d", port))
	attacker = peerSocket(t, "127.0.0.3:0")
	opts.Interfaces, opts.Port, opts.ProxyPort = []string{"lo"}, port, -1
	r = runServer(t, cfg, opts, newMemStore())
	return r, relay, attacker, fmt.Sprintf("127.0.0.1:%d", port)
}

func send(t *testing.T, c *net.UDPConn, p *dhcpv4.DHCPv4, dst string) {
	t.Helper()
	if _, err := c.WriteToUDPAddrPort(p.ToBytes(), netip.MustParseAddrPort(dst)); err != nil {
		t.Fatal(err)
	}
}

func initReboot(mac, want string, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	return message(dhcpv4.MessageTypeRequest, mac, append(mods, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP(want).To4())))...)
}

func fakeMAC(i int) string {
	return fmt.Sprintf("02:00:00:%02x:%02x:%02x", i>>16&0xff, i>>8&0xff, i&0xff)
}

// The attack: spoofed relayed DISCOVERs and INIT-REBOOT REQUESTs,
// 60 of each kind, with a made-up giaddr, from a host that is not the
// relay, and INIT-REBOOTs through the real relay for MACs never offered
// anything. The pool keeps every address and a legitimate client still
// gets the first one.
func TestUDPSpoofedRelaysLeaveThePoolIntact(t *testing.T) {
	r, relay, attacker, server := relayLab(t, Options{})
	const n = 60
	for i := range n {
		mac := fakeMAC(i)
		madeUp := relayed("10.99.0.1", "spoof")
		send(t, attacker, discover(mac, madeUp...), server)
		send(t, attacker, initReboot(mac, fmt.Sprintf("127.0.0.%d", 100+i%51), madeUp...), server)
		// A giaddr of the subnet, from a sender not in allowedRelays.
		send(t, attacker, discover(mac, relayed("127.0.0.2", "spoof")...), server)
		send(t, attacker, initReboot(mac, fmt.Sprintf("127.0.0.%d", 100+i%51), relayed("127.0.0.2", "spoof")...), server)
		// Through the allowed relay, but with no offer: INIT-REBOOT of a
		// client with no record gets no answer and no address.
		send(t, relay, initReboot(fakeMAC(1000+i), fmt.Sprintf("127.0.0.%d", 100+i%51), relayed("127.0.0.2", "x")...), server)
	}
	kilntest.Eventually(t, 10*time.Second, "every spoofed packet dropped", func() bool {
		return testutil.ToFloat64(r.s.m.relayDropped.WithLabelValues(relayUnknownGiaddr)) == 2*n &&
			testutil.ToFloat64(r.s.m.relayDropped.WithLabelValues(relayNotAllowed)) == 2*n &&
			testutil.ToFloat64(r.s.m.packets.WithLabelValues("request", "ignored")) == 5*n-2*n
	})
	if got := r.store.saves(); got != 0 {
		t.Errorf("%d lease saves from spoofed packets", got)
	}
	if free := gauge(t, r, "kiln_dhcp_pool_free"); free != 51 {
		t.Errorf("pool free = %v after the attack, want 51", free)
	}
	// The relay's own client: a full DORA, the first address.
	offer := exchange(t, relay, discover(macUnknown, relayed("127.0.0.2", "port-1")...), server)
	if mt(offer) != dhcpv4.MessageTypeOffer || yiaddr(offer) != "127.0.0.100" {
		t.Fatalf("legitimate client's offer: %v %s", mt(offer), yiaddr(offer))
	}
	ack := exchange(t, relay, requestFor(offer, relayed("127.0.0.2", "port-1")...), server)
	if mt(ack) != dhcpv4.MessageTypeAck || yiaddr(ack) != "127.0.0.100" {
		t.Fatalf("legitimate client's ack: %v %s", mt(ack), yiaddr(ack))
	}
}

// gauge reads one kiln_dhcp pool gauge of subnet "loop".
func gauge(t *testing.T, r *running, name string) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no %s", name)
	return 0
}

// A relay not in allowedRelays is not answered, even with the subnet's
// own giaddr and a well-formed DORA.
func TestUDPRelayNotAllowedIsDropped(t *testing.T) {
	r, relay, attacker, server := relayLab(t, Options{})
	send(t, attacker, discover(macUnknown, relayed("127.0.0.2", "x")...), server)
	kilntest.Eventually(t, 10*time.Second, "the packet dropped", func() bool {
		return testutil.ToFloat64(r.s.m.relayDropped.WithLabelValues(relayNotAllowed)) == 1
	})
	// The server answers to giaddr: had it answered, the relay socket
	// would read that OFFER before the reply to its own DISCOVER.
	offer := exchange(t, relay, discover(macVM1, relayed("127.0.0.2", "x")...), server)
	if offer.ClientHWAddr.String() != macVM1 {
		t.Fatalf("the first reply at the relay is for %s: the spoofed DISCOVER was answered", offer.ClientHWAddr)
	}
}

// INIT-REBOOT (RFC 2131 4.3.2): no record of the client → silence; the
// requested address not on the client's network → NAK; the client's own
// lease → ACK.
func TestUDPInitReboot(t *testing.T) {
	r, relay, _, server := relayLab(t, Options{})
	via := relayed("127.0.0.2", "x")
	send(t, relay, initReboot(macUnknown, "127.0.0.120", via...), server)
	kilntest.Eventually(t, 10*time.Second, "the INIT-REBOOT handled", func() bool {
		return testutil.ToFloat64(r.s.m.packets.WithLabelValues("request", "ignored")) == 1
	})
	nak := exchange(t, relay, initReboot(macUnknown, "192.168.1.20", via...), server)
	if mt(nak) != dhcpv4.MessageTypeNak {
		t.Fatalf("INIT-REBOOT from the wrong network: %v (the first reply; silence was expected before it)", mt(nak))
	}
	offer := exchange(t, relay, discover(macUnknown, via...), server)
	exchange(t, relay, requestFor(offer, via...), server)
	ack := exchange(t, relay, initReboot(macUnknown, yiaddr(offer), via...), server)
	if mt(ack) != dhcpv4.MessageTypeAck || yiaddr(ack) != yiaddr(offer) {
		t.Fatalf("INIT-REBOOT of its own lease: %v %s", mt(ack), yiaddr(ack))
	}
	if nak := exchange(t, relay, initReboot(macUnknown, "127.0.0.140", via...), server); mt(nak) != dhcpv4.MessageTypeNak {
		t.Fatalf("INIT-REBOOT of another address than its lease: %v", mt(nak))
	}
}

// One MAC flooding DISCOVERs is dropped past its burst; another MAC is
// still served at once.
func TestUDPPerMACFlood(t *testing.T) {
	r, relay, _, server := relayLab(t, Options{MACRate: 0.001, MACBurst: 3})
	via := relayed("127.0.0.2", "x")
	const n = 200
	for range n {
		send(t, relay, discover(macVM1, via...), server)
	}
	kilntest.Eventually(t, 10*time.Second, "the flood dropped", func() bool {
		return testutil.ToFloat64(r.s.m.macLimited) == n-3
	})
	// Drain the three answered OFFERs.
	for range 3 {
		if o := receive(t, relay); o.ClientHWAddr.String() != macVM1 {
			t.Fatal(o.ClientHWAddr)
		}
	}
	offer := exchange(t, relay, discover(macVM2, via...), server)
	if mt(offer) != dhcpv4.MessageTypeOffer || offer.ClientHWAddr.String() != macVM2 {
		t.Fatalf("another MAC during the flood: %v for %s", mt(offer), offer.ClientHWAddr)
	}
}
