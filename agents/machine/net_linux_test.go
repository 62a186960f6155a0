package machine

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"github.com/kilnhq/kiln/agents/machine/internal/netnstest"
	"github.com/vishvananda/netlink"
)

// TestBringUpNetwork runs a DHCP server on one end of a veth pair in a
// network namespace of its own and brings the network up on the other.
func TestBringUpNetwork(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "srv0"}, PeerName: "cli0"}); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	srv, err := netlink.LinkByName("srv0")
	if err != nil {
		t.Fatal(err)
	}
	srvAddr := &net.IPNet{IP: net.IPv4(10, 99, 0, 1).To4(), Mask: net.CIDRMask(24, 32)}
	if err := netlink.AddrAdd(srv, &netlink.Addr{IPNet: srvAddr}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(srv); err != nil {
		t.Fatal(err)
	}

	handler := func(conn net.PacketConn, _ net.Addr, m *dhcpv4.DHCPv4) {
		typ := dhcpv4.MessageTypeOffer
		if m.MessageType() == dhcpv4.MessageTypeRequest {
			typ = dhcpv4.MessageTypeAck
		}
		reply, err := dhcpv4.NewReplyFromRequest(m,
			dhcpv4.WithMessageType(typ),
			dhcpv4.WithYourIP(net.IPv4(10, 99, 0, 50)),
			dhcpv4.WithNetmask(srvAddr.Mask),
			dhcpv4.WithRouter(srvAddr.IP),
			dhcpv4.WithServerIP(srvAddr.IP),
			dhcpv4.WithOption(dhcpv4.OptServerIdentifier(srvAddr.IP)),
			dhcpv4.WithLeaseTime(3600),
		)
		if err != nil {
			t.Errorf("reply: %v", err)
			return
		}
		if _, err := conn.WriteTo(reply.ToBytes(), &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ClientPort}); err != nil {
			t.Errorf("send reply: %v", err)
		}
	}
	s, err := server4.NewServer("srv0", &net.UDPAddr{IP: net.IPv4zero, Port: dhcpv4.ServerPort}, handler)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve() }()
	defer s.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lease, err := BringUpNetwork(ctx, testLogger(t), NetworkOptions{Interfaces: []string{"cli0"}, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if lease.Interface != "cli0" || lease.Address.String() != "10.99.0.50/24" || !lease.Router.Equal(srvAddr.IP) || !lease.Server.Equal(srvAddr.IP) {
		t.Errorf("lease = %+v", lease)
	}
	cli, err := netlink.LinkByName("cli0")
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := netlink.AddrList(cli, netlink.FAMILY_V4)
	if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != "10.99.0.50/24" {
		t.Errorf("cli0 addresses = %v, %v", addrs, err)
	}
	routes, err := netlink.RouteList(cli, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var def bool
	for _, r := range routes {
		if (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && r.Gw.Equal(srvAddr.IP) {
			def = true
		}
	}
	if !def {
		t.Errorf("no default route via 10.99.0.1: %v", routes)
	}
	// The address works: the server answers a ping-free TCP connect.
	ln, err := net.Listen("tcp", "10.99.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(10, 99, 0, 50)}}
	c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("connect from the leased address: %v", err)
	}
	c.Close()
}

// TestBringUpNetworkNoLease fails with the reason when no server answers.
func TestBringUpNetworkNoLease(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "srv0"}, PeerName: "cli0"}); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	_, err := BringUpNetwork(context.Background(), testLogger(t), NetworkOptions{Interfaces: []string{"cli0"}, Timeout: 2 * time.Second})
	if err == nil {
		t.Fatal("lease without a DHCP server")
	}
	t.Log(err)
}
