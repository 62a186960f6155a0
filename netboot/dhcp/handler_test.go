package dhcp

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/kilnhq/kiln/spec/kilntest"
)

var bcast68 = netip.MustParseAddrPort("255.255.255.255:68")

func TestOfferCarriesTheSubnetOptions(t *testing.T) {
	h := newHarness(t, testConfig(), nil, Options{})
	offer, dst := h.handle(discover(macVM1), onLab)
	if mt(offer) != dhcpv4.MessageTypeOffer || yiaddr(offer) != "10.42.0.11" {
		t.Fatalf("got %v %s, want an OFFER of 10.42.0.11", mt(offer), yiaddr(offer))
	}
	if dst != bcast68 {
		t.Errorf("sent to %s, want %s", dst, bcast68)
	}
	checks := []struct {
		what      string
		got, want any
	}{
		{"mask", net.IP(offer.SubnetMask()).String(), "255.255.255.0"},
		{"router", offer.Router()[0].String(), "10.42.0.1"},
		{"dns", len(offer.DNS()), 2},
		{"domain", offer.DomainName(), "lab.example"},
		{"hostname", offer.HostName(), "vm-1"},
		{"server id", offer.ServerIdentifier().String(), "10.42.0.5"},
		{"lease", offer.IPAddressLeaseTime(0), time.Hour},
		{"T1", offer.IPAddressRenewalTime(0), 30 * time.Minute},
		{"T2", offer.IPAddressRebindingTime(0), 52*time.Minute + 30*time.Second},
		{"mtu", offer.Options.Get(dhcpv4.OptionInterfaceMTU), []byte{0x05, 0xaa}},
		{"file", offer.BootFileName, ""},
		{"siaddr", offer.ServerIPAddr.String(), "0.0.0.0"},
		{"xid", offer.TransactionID, offer.TransactionID},
	}
	for _, c := range checks {
		if b, ok := c.want.([]byte); ok {
			if !bytes.Equal(c.got.([]byte), b) {
				t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
			}
			continue
		}
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
		}
	}
	// MTU 1500 is not sent.
	offer, _ = h.handle(discover(macVM3, relayed("10.50.0.1", "x")...), onUplink)
	if offer == nil || offer.Options.Has(dhcpv4.OptionInterfaceMTU) {
		t.Errorf("MTU 1500 sent, or no offer: %v", offer)
	}
}

func TestStaticReservation(t *testing.T) {
	h := newHarness(t, testConfig(), nil, Options{})
	_, ack := h.dora(macVM1, onLab)
	if mt(ack) != dhcpv4.MessageTypeAck || yiaddr(ack) != "10.42.0.11" {
		t.Fatalf("got %v %s, want ACK 10.42.0.11", mt(ack), yiaddr(ack))
	}
	l, ok := h.store.get("10.42.0.11")
	if !ok || !l.Reserved || l.MAC != macVM1 || l.Machine != "vm-1" || l.Subnet != "lab" || l.Hostname != "vm-1" {
		t.Errorf("stored %+v", l)
	}
	for _, typ := range []string{EventSeen, EventOffered, EventAcked} {
		evs := h.events.of(typ, macVM1)
		if len(evs) == 0 || evs[0].Machine != "vm-1" || evs[0].Subnet != "lab" {
			t.Errorf("%s events: %+v", typ, evs)
		}
	}
	if evs := h.events.of(EventDiscovered, ""); len(evs) != 0 {
		t.Errorf("a known machine was discovered: %+v", evs)
	}
}

func TestAllocatedOnce(t *testing.T) {
	h := newHarness(t, testConfig(), nil, Options{})
	h.dora(macVM1, onLab)
	_, ack := h.dora(macVM2, onLab)
	// .1 gateway, .2-.9 reserved, .10 free, .11 vm-1's static IP.
	if yiaddr(ack) != "10.42.0.10" {
		t.Fatalf("vm-2 got %s, want 10.42.0.10", yiaddr(ack))
	}
	l, ok := h.store.get("10.42.0.10")
	if !ok || !l.Reserved || l.Machine != "vm-2" {
		t.Fatalf("stored %+v", l)
	}
	saves := h.store.saves()
	_, ack = h.dora(macVM2, onLab)
	if yiaddr(ack) != "10.42.0.10" {
		t.Fatalf("vm-2 got %s the second time", yiaddr(ack))
	}
	if h.store.saves() != saves {
		t.Errorf("a renewal of a stored reservation saved again")
	}
	// Another new machine gets the next free address (.12), not .10.
	cfg := testConfig()
	cfg.Hosts = append(cfg.Hosts, Host{Machine: "vm-4", MAC: mustMAC("52:54:00:42:00:04"), Subnet: "lab"})
	h.s.Update(cfg)
	if _, ack := h.dora("52:54:00:42:00:04", onLab); yiaddr(ack) != "10.42.0.12" {
		t.Errorf("vm-4 got %s, want 10.42.0.12", yiaddr(ack))
	}
	// A new leader starting from the stored leases gives the same.
	h2 := newHarness(t, cfg, h.store.all(), Options{})
	for mac, want := range map[string]string{macVM2: "10.42.0.10", "52:54:00:42:00:04": "10.42.0.12", macVM1: "10.42.0.11"} {
		if _, ack := h2.dora(mac, onLab); yiaddr(ack) != want {
			t.Errorf("after failover %s got %s, want %s", mac, yiaddr(ack), want)
		}
	}
	if h2.store.saves() != 0 {
		t.Errorf("failover re-saved stored reservations: %d saves", h2.store.saves())
	}
}

func TestDiscoveryOfUnknownMAC(t *testing.T) {
	h := newHarness(t, testConfig(), nil, Options{})
	_, ack := h.dora(macUnknown, onLab, pxe(7)...)
	if yiaddr(ack) != "10.42.0.100" {
		t.Fatalf("got %s, want 10.42.0.100", yiaddr(ack))
	}
	evs := h.events.of(EventDiscovered, macUnknown)
	if len(evs) != 1 || evs[0].IP != ip("10.42.0.100") || evs[0].Machine != "" || evs[0].Arch != "uefi-x64" ||
		evs[0].VendorClass != "PXEClient:Arch:00007:UNDI:002001" {
		t.Fatalf("discovered events %+v", evs)
	}
	l, _ := h.store.get("10.42.0.100")
	if l.Reserved || l.MAC != macUnknown || !l.Expires.Equal(h.clock.Now().Add(time.Hour)) {
		t.Errorf("stored %+v", l)
	}
	// It comes back (new DORA, and INIT-REBOOT): same address, discovered once.
	h.clock.Add(10 * time.Minute)
	if _, ack := h.dora(macUnknown, onLab); yiaddr(ack) != "10.42.0.100" {
		t.Errorf("second DORA got %s", yiaddr(ack))
	}
	reboot := message(dhcpv4.MessageTypeRequest, macUnknown, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IP{10, 42, 0, 100})))
	if ack, _ := h.handle(reboot, onLab); mt(ack) != dhcpv4.MessageTypeAck {
		t.Errorf("init-reboot got %v", mt(ack))
	}
	if n := len(h.events.of(EventDiscovered, macUnknown)); n != 1 {
		t.Errorf("discovered %d times", n)
	}
	// A second unknown MAC gets the next address.
	if _, ack := h.dora("52:54:00:99:00:02", onLab); yiaddr(ack) != "10.42.0.101" {
		t.Errorf("second unknown got %s", yiaddr(ack))
	}
}

func TestUnknownWithoutDynamicRangeIgnored(t *testing.T) {
	cfg := testConfig()
	cfg.Subnets[0].Dynamic = nil
	h := newHarness(t, cfg, nil, Options{})
	if offer, _ := h.handle(discover(macUnknown), onLab); offer != nil {
		t.Fatalf("unknown MAC offered %s without a dynamic range", yiaddr(offer))
	}
	init := message(dhcpv4.MessageTypeRequest, macUnknown, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IP{10, 42, 0, 150})))
	if r, _ := h.handle(init, onLab); r != nil {
		t.Fatalf("unknown MAC answered %v", mt(r))
	}
}

func TestPXEBootDecisions(t *testing.T) {
	cfg := testConfig()
	cfg.Boot = BootConfig{ScriptURL: "http://{server}:8080/boot/{mac}/{ip}.ipxe"}
	withTFTP := testConfig()
	withTFTP.Boot.TFTPServer = ip("10.42.0.9")
	cases := []struct {
		name   string
		cfg    Config
		mods   []dhcpv4.Modifier
		file   string // "" for no boot options
		next   string
		vendor string
		arch   string
	}{
		{"bios", cfg, pxe(0), "undionly.kpxe", "10.42.0.5", "", "bios"},
		{"uefi x64", cfg, pxe(7), "ipxe.efi", "10.42.0.5", "", "uefi-x64"},
		{"uefi bc", cfg, pxe(9), "ipxe.efi", "10.42.0.5", "", "uefi-x64"},
		{"uefi arm64", cfg, pxe(11), "snp-arm64.efi", "10.42.0.5", "", "uefi-arm64"},
		{"uefi ia32 unsupported", cfg, pxe(6), "", "", "", "uefi-ia32"},
		{"tftp server", withTFTP, pxe(0), "undionly.kpxe", "10.42.0.9", "", "bios"},
		{"http boot x64", cfg, httpBoot(16), "http://10.42.0.5:8080/ipxe/ipxe.efi", "10.42.0.5", "HTTPClient", "uefi-x64-http"},
		{"http boot arm64", cfg, httpBoot(19), "http://10.42.0.5:8080/ipxe/snp-arm64.efi", "10.42.0.5", "HTTPClient", "uefi-arm64-http"},
		{"ipxe", cfg, append(pxe(0), ipxeUserClass), "http://10.42.0.5:8080/boot/" + macUnknown + "/10.42.0.100.ipxe", "10.42.0.5", "", "bios"},
		{"ipxe on arm64", cfg, append(pxe(11), ipxeUserClass), "http://10.42.0.5:8080/boot/" + macUnknown + "/10.42.0.100.ipxe", "10.42.0.5", "", "uefi-arm64"},
		{"ipxe rfc3004 user class", cfg, append(pxe(7), dhcpv4.WithUserClass("iPXE", true)), "http://10.42.0.5:8080/boot/" + macUnknown + "/10.42.0.100.ipxe", "10.42.0.5", "", "uefi-x64"},
		{"pxe arch in vendor class only", cfg, []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003016"))}, "ipxe.efi", "10.42.0.5", "", "uefi-x64"},
		{"not pxe", cfg, nil, "", "", "", ""},
		{"ipxe without pxe vendor class", cfg, []dhcpv4.Modifier{ipxeUserClass}, "", "", "", ""},
		{"other vendor class", cfg, []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("udhcp 1.36.1"))}, "", "", "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, c.cfg, nil, Options{})
			offer, ack := h.dora(macUnknown, onLab, c.mods...)
			if mt(ack) != dhcpv4.MessageTypeAck {
				t.Fatalf("no ACK: %v", mt(ack))
			}
			for _, r := range []*dhcpv4.DHCPv4{offer, ack} {
				if c.file == "" {
					if r.BootFileName != "" || r.Options.Has(dhcpv4.OptionBootfileName) || !r.ServerIPAddr.Equal(net.IPv4zero) {
						t.Errorf("%v: boot options for a client that should get none: file %q next %s", mt(r), r.BootFileName, r.ServerIPAddr)
					}
					continue
				}
				if r.BootFileName != c.file || r.BootFileNameOption() != c.file {
					t.Errorf("%v: file %q / option 67 %q, want %q", mt(r), r.BootFileName, r.BootFileNameOption(), c.file)
				}
				if r.ServerIPAddr.String() != c.next {
					t.Errorf("%v: next-server %s, want %s", mt(r), r.ServerIPAddr, c.next)
				}
				if r.ClassIdentifier() != c.vendor {
					t.Errorf("%v: vendor class %q, want %q", mt(r), r.ClassIdentifier(), c.vendor)
				}
			}
			if evs := h.events.of(EventSeen, macUnknown); len(evs) == 0 || evs[0].Arch != c.arch {
				t.Errorf("seen events %+v, want arch %q", evs, c.arch)
			}
		})
	}
}

func TestProxyDHCP(t *testing.T) {
	h := newHarness(t, testConfig(), nil, Options{})
	mac := "52:54:00:10:00:01"
	offer, dst := h.handle(discover(mac, pxe(7)...), onSite)
	if mt(offer) != dhcpv4.MessageTypeOffer {
		t.Fatalf("no proxy offer: %v", mt(offer))
	}
	if !offer.YourIPAddr.Equal(net.IPv4zero) || offer.Options.Has(dhcpv4.OptionIPAddressLeaseTime) || offer.Options.Has(dhcpv4.OptionSubnetMask) {
		t.Errorf("proxy offer hands out an address: yiaddr %s, options %v", offer.YourIPAddr, offer.Options)
	}
	if offer.ClassIdentifier() != "PXEClient" || offer.BootFileName != "ipxe.efi" || offer.ServerIPAddr.String() != "192.168.10.5" ||
		offer.ServerIdentifier().String() != "192.168.10.5" {
		t.Errorf("proxy offer: vendor %q file %q next %s sid %s", offer.ClassIdentifier(), offer.BootFileName, offer.ServerIPAddr, offer.ServerIdentifier())
	}
	if vi := offer.Options.Get(dhcpv4.OptionVendorSpecificInformation); !bytes.Equal(vi, []byte{6, 1, 8, 255}) {
		t.Errorf("option 43 = %v, want PXE_DISCOVERY_CONTROL 8", vi)
	}
	if uuid := offer.Options.Get(dhcpv4.OptionClientMachineIdentifier); len(uuid) != 17 {
		t.Errorf("option 97 not echoed: %v", uuid)
	}
	if dst != bcast68 {
		t.Errorf("sent to %s", dst)
	}
	if evs := h.events.of(EventOffered, mac); len(evs) != 1 || evs[0].Machine != "pxe-1" || evs[0].IP.IsValid() {
		t.Errorf("offered events %+v", evs)
	}

	// Not PXE: the site's DHCP server's business.
	if r, _ := h.handle(discover(macUnknown), onSite); r != nil {
		t.Errorf("proxy answered a non-PXE client")
	}
	// A REQUEST on port 67 is for the site's server.
	if r, _ := h.handle(requestFor(offer, pxe(7)...), onSite); r != nil {
		t.Errorf("proxy answered a REQUEST on port 67: %v", mt(r))
	}
	// The REQUEST to 4011, from the address the site's server gave.
	at4011 := onSite
	at4011.Proxy, at4011.Local, at4011.Peer = true, ip("192.168.10.5"), netip.MustParseAddrPort("192.168.10.77:68")
	bootItem := dhcpv4.WithGeneric(dhcpv4.OptionVendorSpecificInformation, []byte{71, 4, 0x80, 0x00, 0x00, 0x00, 255})
	req := message(dhcpv4.MessageTypeRequest, mac, append(pxe(7), dhcpv4.WithClientIP(net.IP{192, 168, 10, 77}), bootItem)...)
	ack, dst := h.handle(req, at4011)
	if mt(ack) != dhcpv4.MessageTypeAck || ack.BootFileName != "ipxe.efi" || !ack.YourIPAddr.Equal(net.IPv4zero) {
		t.Fatalf("4011: %v file %q yiaddr %s", mt(ack), yiaddr(ack), ack.YourIPAddr)
	}
	if dst != at4011.Peer {
		t.Errorf("4011 reply to %s, want %s", dst, at4011.Peer)
	}
	if vi := ack.Options.Get(dhcpv4.OptionVendorSpecificInformation); !bytes.Equal(vi, []byte{6, 1, 8, 71, 4, 0x80, 0, 0, 0, 255}) {
		t.Errorf("4011 option 43 = %v, want the boot item echoed", vi)
	}
	// iPXE asks 4011 too (ProxyDHCPREQUEST): its script.
	req = message(dhcpv4.MessageTypeRequest, mac, append(pxe(7), ipxeUserClass, dhcpv4.WithClientIP(net.IP{192, 168, 10, 77}))...)
	if ack, _ := h.handle(req, at4011); ack == nil || ack.BootFileName != "http://192.168.10.5:8080/boot/"+mac+"/script.ipxe" {
		t.Errorf("iPXE at 4011: %v", ack)
	}
	// Nothing is ever allocated or saved there.
	if n := h.store.saves(); n != 0 {
		t.Errorf("%d saves in proxy mode", n)
	}
	// HTTP boot clients get HTTPClient and the URL, no option 43.
	offer, _ = h.handle(discover(mac, httpBoot(16)...), onSite)
	if offer == nil || offer.ClassIdentifier() != "HTTPClient" || offer.Options.Has(dhcpv4.OptionVendorSpecificInformation) ||
		offer.BootFileNameOption() != "http://192.168.10.5:8080/ipxe/ipxe.efi" {
		t.Errorf("HTTP boot proxy offer: %v", offer)
	}
}

func TestRelay(t *testing.T) {
	h := newHarness(t, testConfig(), nil, Options{})
	mods := append(relayed("10.50.0.1", "ge-0/0/7"), pxe(0)...)
	offer, dst := h.handle(discover(macUnknown, mods...), onUplink)
	if yiaddr(offer) != "10.50.0.100" {
		t.Fatalf("relayed offer %s", yiaddr(offer))
	}
	if dst != netip.MustParseAddrPort("10.50.0.1:67") {
		t.Errorf("relayed offer sent to %s", dst)
	}
	want := discover(macUnknown, mods...).Options.Get(dhcpv4.OptionRelayAgentInformation)
	if got := offer.Options.Get(dhcpv4.OptionRelayAgentInformation); !bytes.Equal(got, want) {
		t.Errorf("option 82 = %v, want it echoed: %v", got, want)
	}
	raw := offer.ToBytes()
	if i := bytes.Index(raw, append([]byte{82, byte(len(want))}, want...)); i < 0 || raw[i+2+len(want)] != 255 {
		t.Errorf("option 82 is not the last option")
	}
	if offer.GatewayIPAddr.String() != "10.50.0.1" || offer.ServerIdentifier().String() != "10.0.0.5" ||
		offer.Router()[0].String() != "10.50.0.1" || offer.ServerIPAddr.String() != "10.0.0.5" || offer.BootFileName != "undionly.kpxe" {
		t.Errorf("relayed offer: giaddr %s sid %s router %v next %s file %q", offer.GatewayIPAddr, offer.ServerIdentifier(),
			offer.Router(), offer.ServerIPAddr, offer.BootFileName)
	}
	ack, dst := h.handle(requestFor(offer, mods...), onUplink)
	if yiaddr(ack) != "10.50.0.100" || dst.Addr() != ip("10.50.0.1") || ack.IPAddressLeaseTime(0) != 30*time.Minute {
		t.Fatalf("relayed ack %s to %s", yiaddr(ack), dst)
	}
	for _, typ := range []string{EventSeen, EventAcked, EventDiscovered} {
		evs := h.events.of(typ, macUnknown)
		if len(evs) == 0 || evs[0].CircuitID != "ge-0/0/7" || evs[0].Relay != ip("10.50.0.1") || evs[0].Subnet != "remote" {
			t.Errorf("%s events %+v", typ, evs)
		}
	}
	// A known machine behind the relay: its static IP.
	if _, ack := h.dora(macVM3, onUplink, relayed("10.50.0.1", "ge-0/0/8")...); yiaddr(ack) != "10.50.0.20" {
		t.Errorf("vm-3 got %s", yiaddr(ack))
	}
	// A NAK through a relay has the broadcast bit, for the relay to broadcast it.
	bad := message(dhcpv4.MessageTypeRequest, macVM3, append(relayed("10.50.0.1", "x"), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IP{10, 50, 0, 21})))...)
	nak, dst := h.handle(bad, onUplink)
	if mt(nak) != dhcpv4.MessageTypeNak || !nak.IsBroadcast() || dst.Addr() != ip("10.50.0.1") {
		t.Errorf("relayed NAK: %v broadcast %v to %s", mt(nak), nak.IsBroadcast(), dst)
	}
}

func TestNeverAnswersTheWrongNetwork(t *testing.T) {
	h := newHarness(t, testConfig(), nil, Options{})
	cases := []struct {
		name string
		req  *dhcpv4.DHCPv4
		in   Arrival
	}{
		{"interface on no served subnet", discover(macVM1), onOther},
		{"interface without addresses", discover(macVM1), Arrival{Interface: "eth9"}},
		{"direct on the relay subnet's link", discover(macVM3), Arrival{Interface: "eth5", Addrs: []netip.Prefix{pfx("10.50.0.5/24")}}},
		{"giaddr in no subnet", discover(macUnknown, relayed("10.77.0.1", "x")...), onUplink},
		{"giaddr in a managed subnet of another link", discover(macUnknown, relayed("10.42.0.1", "x")...), onUplink},
		{"4011 from a managed subnet", discover(macUnknown, pxe(0)...), Arrival{Interface: "eth0", Addrs: onLab.Addrs, Proxy: true, Peer: netip.MustParseAddrPort("10.42.0.50:68")}},
		{"relayed to 4011", discover(macUnknown, relayed("10.50.0.1", "x")...), Arrival{Interface: "uplink", Addrs: onUplink.Addrs, Proxy: true}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if r, dst := h.handle(c.req, c.in); r != nil {
				t.Errorf("answered %v to %s", mt(r), dst)
			}
		})
	}
	// A relay on our own managed link (perfdhcp) is served.
	onLabUnicast := onLab
	onLabUnicast.Local = ip("10.42.0.5")
	if r, dst := h.handle(discover(macUnknown, relayed("10.42.0.200", "x")...), onLabUnicast); yiaddr(r) != "10.42.0.100" || dst != netip.MustParseAddrPort("10.42.0.200:67") {
		t.Errorf("relay on the managed link: %s to %s", yiaddr(r), dst)
	}
	if evs := h.events.of(EventSeen, macVM1); len(evs) != 0 {
		t.Errorf("events for requests not ours: %+v", evs)
	}
}

func TestRequestStates(t *testing.T) {
	h := newHarness(t, testConfig(), nil, Options{})
	offer, ack := h.dora(macVM1, onLab)
	if yiaddr(ack) != "10.42.0.11" {
		t.Fatalf("vm-1 got %s", yiaddr(ack))
	}
	sid := dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP{10, 42, 0, 5}))
	req := func(mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
		return message(dhcpv4.MessageTypeRequest, macVM1, mods...)
	}
	reqIP := func(a string) dhcpv4.Modifier {
		return dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP(a)))
	}
	renewAt := onLab
	renewAt.Local = ip("10.42.0.5")
	cases := []struct {
		name string
		req  *dhcpv4.DHCPv4
		in   Arrival
		want dhcpv4.MessageType
		dst  string
	}{
		{"selecting", requestFor(offer), onLab, dhcpv4.MessageTypeAck, "255.255.255.255:68"},
		{"selecting a wrong address", req(sid, reqIP("10.42.0.12")), onLab, dhcpv4.MessageTypeNak, "255.255.255.255:68"},
		{"selecting another server", req(dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP{10, 42, 0, 6})), reqIP("10.42.0.11")), onLab, dhcpv4.MessageTypeNone, ""},
		{"init-reboot", req(reqIP("10.42.0.11")), onLab, dhcpv4.MessageTypeAck, "255.255.255.255:68"},
		{"init-reboot wrong address", req(reqIP("10.42.0.12")), onLab, dhcpv4.MessageTypeNak, "255.255.255.255:68"},
		{"init-reboot from another network", req(reqIP("192.168.1.20")), onLab, dhcpv4.MessageTypeNak, "255.255.255.255:68"},
		{"renewing", req(dhcpv4.WithClientIP(net.IP{10, 42, 0, 11})), renewAt, dhcpv4.MessageTypeAck, "10.42.0.11:68"},
		{"rebinding", req(dhcpv4.WithClientIP(net.IP{10, 42, 0, 11}), dhcpv4.WithBroadcast(true)), onLab, dhcpv4.MessageTypeAck, "10.42.0.11:68"},
		{"renewing a wrong address", req(dhcpv4.WithClientIP(net.IP{10, 42, 0, 12})), renewAt, dhcpv4.MessageTypeNak, "255.255.255.255:68"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, dst := h.handle(c.req, c.in)
			if mt(r) != c.want {
				t.Fatalf("got %v, want %v", mt(r), c.want)
			}
			if r != nil && dst.String() != c.dst {
				t.Errorf("sent to %s, want %s", dst, c.dst)
			}
			if mt(r) == dhcpv4.MessageTypeAck && (yiaddr(r) != "10.42.0.11" || r.HostName() != "vm-1") {
				t.Errorf("ACK of %s (%q)", yiaddr(r), r.HostName())
			}
			if mt(r) == dhcpv4.MessageTypeNak && (!r.YourIPAddr.Equal(net.IPv4zero) || r.ServerIdentifier().String() != "10.42.0.5") {
				t.Errorf("NAK with yiaddr %s sid %s", r.YourIPAddr, r.ServerIdentifier())
			}
		})
	}
	if len(h.events.of(EventNaked, macVM1)) != 4 {
		t.Errorf("NAK events: %+v", h.events.of(EventNaked, macVM1))
	}
	// An unknown MAC may not take a leased address: with no record of it,
	// its INIT-REBOOT gets no answer (RFC 2131 4.3.2).
	_, ack = h.dora(macUnknown, onLab)
	steal := message(dhcpv4.MessageTypeRequest, "52:54:00:99:00:66", reqIP(yiaddr(ack)))
	if r, _ := h.handle(steal, onLab); r != nil {
		t.Errorf("stealing a leased address: %v", mt(r))
	}
	// Nor a static IP, nor an address outside the dynamic range.
	for _, a := range []string{"10.42.0.11", "10.42.0.50", "10.42.0.3"} {
		r, _ := h.handle(message(dhcpv4.MessageTypeRequest, "52:54:00:99:00:66", reqIP(a)), onLab)
		if r != nil {
			t.Errorf("unknown MAC requesting %s: %v", a, mt(r))
		}
	}
	// With a record (its own lease), another address is refused.
	r, _ := h.handle(message(dhcpv4.MessageTypeRequest, macUnknown, reqIP("10.42.0.150")), onLab)
	if mt(r) != dhcpv4.MessageTypeNak {
		t.Errorf("a leased MAC's INIT-REBOOT of another address: %v", mt(r))
	}
}

func TestChoosingAnotherServerFreesTheOffer(t *testing.T) {
	cfg := testConfig()
	cfg.Subnets[0].Dynamic = &Range{ip("10.42.0.100"), ip("10.42.0.100")}
	h := newHarness(t, cfg, nil, Options{})
	offer, _ := h.handle(discover(macUnknown), onLab)
	if yiaddr(offer) != "10.42.0.100" {
		t.Fatalf("offer %s", yiaddr(offer))
	}
	if r, _ := h.handle(discover("52:54:00:99:00:02"), onLab); r != nil {
		t.Fatalf("the held address was offered to another MAC")
	}
	other := requestFor(offer)
	other.UpdateOption(dhcpv4.OptServerIdentifier(net.IP{10, 42, 0, 66}))
	if r, _ := h.handle(other, onLab); r != nil {
		t.Fatalf("answered a REQUEST for another server")
	}
	if r, _ := h.handle(discover("52:54:00:99:00:02"), onLab); yiaddr(r) != "10.42.0.100" {
		t.Errorf("the released offer was not offered again: %s", yiaddr(r))
	}
}

func TestOfferHoldLapses(t *testing.T) {
	cfg := testConfig()
	cfg.Subnets[0].Dynamic = &Range{ip("10.42.0.100"), ip("10.42.0.100")}
	h := newHarness(t, cfg, nil, Options{OfferHold: 30 * time.Second})
	offerA, _ := h.handle(discover(macUnknown), onLab)
	if yiaddr(offerA) != "10.42.0.100" {
		t.Fatal("no offer")
	}
	h.clock.Add(29 * time.Second)
	if r, _ := h.handle(discover("52:54:00:99:00:02"), onLab); r != nil {
		t.Fatal("offered a held address")
	}
	h.clock.Add(2 * time.Second)
	offerB, _ := h.handle(discover("52:54:00:99:00:02"), onLab)
	if yiaddr(offerB) != "10.42.0.100" {
		t.Fatalf("lapsed hold not reused: %s", yiaddr(offerB))
	}
	if r, _ := h.handle(requestFor(offerA), onLab); r != nil {
		t.Errorf("late REQUEST of a re-offered address (no record of the client left): %v", mt(r))
	}
	if r, _ := h.handle(requestFor(offerB), onLab); mt(r) != dhcpv4.MessageTypeAck {
		t.Errorf("REQUEST of the holder: %v", mt(r))
	}
}

func TestRenewalSavesOnlyWhenNeeded(t *testing.T) {
	h := newHarness(t, testConfig(), nil, Options{})
	_, ack := h.dora(macUnknown, onLab)
	if ack == nil {
		t.Fatal("no ack")
	}
	saves := h.store.saves()
	renew := message(dhcpv4.MessageTypeRequest, macUnknown, dhcpv4.WithClientIP(ack.YourIPAddr))
	// A retransmission right away: answered from memory with what is stored.
	r, _ := h.handle(renew, onLab)
	if mt(r) != dhcpv4.MessageTypeAck || h.store.saves() != saves {
		t.Fatalf("immediate renewal: %v, %d saves", mt(r), h.store.saves()-saves)
	}
	// At T1 the expiry moves: saved.
	h.clock.Add(30 * time.Minute)
	r, _ = h.handle(renew, onLab)
	if mt(r) != dhcpv4.MessageTypeAck || r.IPAddressLeaseTime(0) != time.Hour || h.store.saves() != saves+1 {
		t.Fatalf("renewal at T1: %v lease %s, %d saves", mt(r), r.IPAddressLeaseTime(0), h.store.saves()-saves)
	}
	l, _ := h.store.get(yiaddr(ack))
	if !l.Expires.Equal(h.clock.Now().Add(time.Hour)) {
		t.Errorf("stored expiry %s", l.Expires)
	}
}

func TestDecline(t *testing.T) {
	h := newHarness(t, testConfig(), nil, Options{DeclineHold: 10 * time.Minute})
	_, ack := h.dora(macUnknown, onLab)
	if yiaddr(ack) != "10.42.0.100" {
		t.Fatal(yiaddr(ack))
	}
	dec := message(dhcpv4.MessageTypeDecline, macUnknown,
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IP{10, 42, 0, 100})),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP{10, 42, 0, 5})))
	if r, _ := h.handle(dec, onLab); r != nil {
		t.Fatal("DECLINE answered")
	}
	if evs := h.events.of(EventDeclined, macUnknown); len(evs) != 1 || evs[0].IP != ip("10.42.0.100") {
		t.Errorf("declined events %+v", evs)
	}
	kilntest.Eventually(t, 10*time.Second, "the ended lease saved", func() bool { l, _ := h.store.get("10.42.0.100"); return l.Ended() })
	// Nobody gets it while quarantined, not even by asking for it.
	if _, ack := h.dora(macUnknown, onLab); yiaddr(ack) != "10.42.0.101" {
		t.Errorf("after DECLINE got %s, want 10.42.0.101", yiaddr(ack))
	}
	ask := message(dhcpv4.MessageTypeRequest, "52:54:00:99:00:02", dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IP{10, 42, 0, 100})))
	if r, _ := h.handle(ask, onLab); mt(r) == dhcpv4.MessageTypeAck {
		t.Errorf("quarantined address requested: %v", mt(r))
	}
	// A DECLINE from a MAC that does not hold the address is ignored.
	dec2 := message(dhcpv4.MessageTypeDecline, "52:54:00:99:00:03", dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IP{10, 42, 0, 101})))
	if h.handle(dec2, onLab); len(h.events.of(EventDeclined, "")) != 1 {
		t.Errorf("a stranger's DECLINE was honoured")
	}
	// After the quarantine, it is free again.
	h.clock.Add(11 * time.Minute)
	if _, r := h.dora("52:54:00:99:00:02", onLab, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IP{10, 42, 0, 100}))); yiaddr(r) != "10.42.0.100" {
		t.Errorf("after the quarantine: %v %s", mt(r), yiaddr(r))
	}
}

func TestRelease(t *testing.T) {
	h := newHarness(t, testConfig(), nil, Options{})
	_, ack := h.dora(macUnknown, onLab)
	rel := message(dhcpv4.MessageTypeRelease, macUnknown, dhcpv4.WithClientIP(ack.YourIPAddr),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP{10, 42, 0, 5})))
	if r, _ := h.handle(rel, onLab); r != nil {
		t.Fatal("RELEASE answered")
	}
	if evs := h.events.of(EventReleased, macUnknown); len(evs) != 1 {
		t.Errorf("released events %+v", evs)
	}
	kilntest.Eventually(t, 10*time.Second, "the ended lease saved", func() bool { l, _ := h.store.get("10.42.0.100"); return l.Ended() })
	// The address is free: another MAC may ask for it…
	if _, r := h.dora("52:54:00:99:00:02", onLab, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IP{10, 42, 0, 100}))); yiaddr(r) != "10.42.0.100" {
		t.Errorf("released address not free: %v %s", mt(r), yiaddr(r))
	}
	// A reservation survives a RELEASE.
	h.dora(macVM1, onLab)
	h.handle(message(dhcpv4.MessageTypeRelease, macVM1, dhcpv4.WithClientIP(net.IP{10, 42, 0, 11})), onLab)
	if l, _ := h.store.get("10.42.0.11"); !l.Reserved {
		t.Errorf("reservation released: %+v", l)
	}
	if _, ack := h.dora(macVM1, onLab); yiaddr(ack) != "10.42.0.11" {
		t.Errorf("vm-1 after release: %s", yiaddr(ack))
	}
}

func TestReturningMACGetsItsAddressBack(t *testing.T) {
	h := newHarness(t, testConfig(), nil, Options{})
	h.dora(macUnknown, onLab)
	h.dora("52:54:00:99:00:02", onLab)
	h.clock.Add(2 * time.Hour) // both expired
	if _, ack := h.dora("52:54:00:99:00:03", onLab); yiaddr(ack) != "10.42.0.102" {
		t.Errorf("a new MAC took %s, want a never-used address", yiaddr(ack))
	}
	if _, ack := h.dora(macUnknown, onLab); yiaddr(ack) != "10.42.0.100" {
		t.Errorf("returning MAC got %s, want its old 10.42.0.100", yiaddr(ack))
	}
}

func TestInform(t *testing.T) {
	h := newHarness(t, testConfig(), nil, Options{})
	inf := message(dhcpv4.MessageTypeInform, macVM1, dhcpv4.WithClientIP(net.IP{10, 42, 0, 11}))
	r, dst := h.handle(inf, onLab)
	if mt(r) != dhcpv4.MessageTypeAck || !r.YourIPAddr.Equal(net.IPv4zero) || r.Options.Has(dhcpv4.OptionIPAddressLeaseTime) {
		t.Fatalf("INFORM: %v yiaddr %s", mt(r), yiaddr(r))
	}
	if dst.String() != "10.42.0.11:68" || r.DomainName() != "lab.example" {
		t.Errorf("INFORM reply to %s, domain %q", dst, r.DomainName())
	}
	if h.store.saves() != 0 {
		t.Error("INFORM saved a lease")
	}
}

func TestMalformedIgnored(t *testing.T) {
	h := newHarness(t, testConfig(), nil, Options{})
	reply := discover(macUnknown)
	reply.OpCode = dhcpv4.OpcodeBootReply
	noType := discover(macUnknown)
	noType.Options.Del(dhcpv4.OptionDHCPMessageType)
	noMAC := discover(macUnknown)
	noMAC.ClientHWAddr = nil
	zeroMAC := discover("00:00:00:00:00:00")
	badOpt50 := discover(macUnknown, dhcpv4.WithGeneric(dhcpv4.OptionRequestedIPAddress, []byte{10, 42, 0}))
	cases := map[string]*dhcpv4.DHCPv4{
		"reply":                 reply,
		"no message type":       noType,
		"no hardware address":   noMAC,
		"zero hardware address": zeroMAC,
		"bad option 50":         badOpt50,
		"request without address": message(dhcpv4.MessageTypeRequest, macUnknown,
			dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP{10, 42, 0, 5}))),
		"release without ciaddr":  message(dhcpv4.MessageTypeRelease, macUnknown),
		"decline without address": message(dhcpv4.MessageTypeDecline, macUnknown),
	}
	for name, p := range cases {
		t.Run(name, func(t *testing.T) {
			if r, _ := h.s.Handle(h.ctx, p, onLab); r != nil {
				t.Errorf("answered %v", mt(r))
			}
		})
	}
	if r, _ := h.s.Handle(h.ctx, nil, onLab); r != nil {
		t.Error("answered nil")
	}
	if h.s.decodeOK(nil) || h.s.decodeOK([]byte{1, 2, 3}) {
		t.Error("decoded garbage")
	}
}

// decodeOK is decode for tests.
func (s *Server) decodeOK(b []byte) bool { _, ok := s.decode(b, false); return ok }
