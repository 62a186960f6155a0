package dhcp

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// FuzzHandle feeds raw datagrams through decoding, Handle and encoding
// the reply, arriving on each kind of interface. Nothing may panic, and
// a reply must be a BOOTREPLY to the requesting MAC.
func FuzzHandle(f *testing.F) {
	seeds := []*dhcpv4.DHCPv4{
		discover(macVM1),
		discover(macUnknown, pxe(0)...),
		discover(macUnknown, append(pxe(7), ipxeUserClass)...),
		discover(macUnknown, httpBoot(19)...),
		discover(macVM3, append(relayed("10.50.0.1", "ge-0/0/7"), pxe(11)...)...),
		discover(macUnknown, dhcpv4.WithUserClass("iPXE", true), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IP{10, 42, 0, 150}))),
		message(dhcpv4.MessageTypeRequest, macVM1, dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP{10, 42, 0, 5})),
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IP{10, 42, 0, 11}))),
		message(dhcpv4.MessageTypeRequest, macUnknown, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IP{10, 42, 0, 100}))),
		message(dhcpv4.MessageTypeRequest, macUnknown, dhcpv4.WithClientIP(net.IP{10, 42, 0, 100})),
		message(dhcpv4.MessageTypeRequest, macVM3, append(relayed("10.50.0.1", "x"), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IP{10, 50, 0, 20})))...),
		message(dhcpv4.MessageTypeRequest, "52:54:00:10:00:01", append(pxe(7), dhcpv4.WithClientIP(net.IP{192, 168, 10, 77}),
			dhcpv4.WithGeneric(dhcpv4.OptionVendorSpecificInformation, []byte{71, 4, 0x80, 0, 0, 0, 255}))...),
		message(dhcpv4.MessageTypeRelease, macUnknown, dhcpv4.WithClientIP(net.IP{10, 42, 0, 100})),
		message(dhcpv4.MessageTypeDecline, macUnknown, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IP{10, 42, 0, 100}))),
		message(dhcpv4.MessageTypeInform, macVM1, dhcpv4.WithClientIP(net.IP{10, 42, 0, 11})),
	}
	for i, p := range seeds {
		f.Add(p.ToBytes(), uint8(i))
	}
	f.Add([]byte{}, uint8(0))
	f.Add(make([]byte, 240), uint8(1))
	arrivals := []Arrival{onLab, onSite, onUplink, onOther, {Interface: "eth1", Addrs: onSite.Addrs, Proxy: true,
		Local: ip("192.168.10.5"), Peer: netip.MustParseAddrPort("192.168.10.77:68")}}
	h := newHarness(f, testConfig(), nil, Options{BatchDelay: time.Microsecond})
	f.Fuzz(func(t *testing.T, data []byte, which uint8) {
		h.t = t
		req, ok := h.s.decode(data, false)
		if !ok {
			return
		}
		reply, dst := h.s.Handle(h.ctx, req, arrivals[int(which)%len(arrivals)])
		if reply == nil {
			return
		}
		if reply.OpCode != dhcpv4.OpcodeBootReply || string(reply.ClientHWAddr) != string(req.ClientHWAddr) || !dst.IsValid() {
			t.Fatalf("bad reply %v to %s", reply, dst)
		}
		if _, err := dhcpv4.FromBytes(reply.ToBytes()); err != nil {
			t.Fatalf("reply does not decode: %v", err)
		}
	})
}
