//go:build e2e

package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kilnhq/kiln/e2e/netlab"
)

// The DHCP test lab proven against independent servers (dnsmasq, Kea, ISC
// dhcrelay) with independent clients (ISC dhclient, busybox udhcpc,
// perfdhcp, netlab's Go probe), so that Kiln's DHCP server can later be
// dropped into the same shapes. Everything runs in network namespaces the
// lab creates and removes.

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func checkLease(t *testing.T, l *netlab.Lease, want netlab.Lease) {
	t.Helper()
	if l.IP != want.IP || (want.Prefix.IsValid() && l.Prefix != want.Prefix) {
		t.Errorf("%s: address %s (%s), want %s (%s)", l.Client, l.IP, l.Prefix, want.IP, want.Prefix)
	}
	if want.Routers != nil && !slices.Equal(l.Routers, want.Routers) {
		t.Errorf("%s: routers %v, want %v", l.Client, l.Routers, want.Routers)
	}
	if want.DNS != nil && !slices.Equal(l.DNS, want.DNS) {
		t.Errorf("%s: DNS %v, want %v", l.Client, l.DNS, want.DNS)
	}
	for _, c := range []struct{ what, got, want string }{
		{"domain", l.Domain, want.Domain},
		{"hostname", l.Hostname, want.Hostname},
		{"filename", l.Filename, want.Filename},
	} {
		if c.want != "" && c.got != c.want {
			t.Errorf("%s: %s %q, want %q", l.Client, c.what, c.got, c.want)
		}
	}
	if want.NextServer.IsValid() && l.NextServer != want.NextServer {
		t.Errorf("%s: next-server %s, want %s", l.Client, l.NextServer, want.NextServer)
	}
	if want.ServerID.IsValid() && l.ServerID != want.ServerID {
		t.Errorf("%s: server id %s, want %s", l.Client, l.ServerID, want.ServerID)
	}
	if want.MTU != 0 && l.MTU != want.MTU {
		t.Errorf("%s: MTU %d, want %d", l.Client, l.MTU, want.MTU)
	}
	if want.LeaseTime != 0 && l.LeaseTime != want.LeaseTime {
		t.Errorf("%s: lease time %s, want %s", l.Client, l.LeaseTime, want.LeaseTime)
	}
}

// dnsmasq in srv serves a reservation to dhclient (with PXE-style vendor
// class, user class and client arch) and a dynamic address to udhcpc, and
// the Go probe sees the same offer.
func TestLabDnsmasqClients(t *testing.T) {
	netlab.RequireBinary(t, "dnsmasq", "dhclient", "busybox")
	r := netlab.Rack(t)
	// --no-ping: dnsmasq would otherwise ping a new dynamic address for
	// up to 3 s before offering it.
	srv := netlab.Dnsmasq(r.Srv, r.Iface, "--log-dhcp", "--no-ping",
		"--dhcp-range=10.42.0.100,10.42.0.199,255.255.255.0,1h",
		"--dhcp-host=52:54:00:42:00:01,10.42.0.11,vm-1",
		"--dhcp-option=option:router,10.42.0.1",
		"--dhcp-option=option:dns-server,10.42.0.1,10.42.0.2",
		"--dhcp-option=option:domain-name,lab.example",
		"--dhcp-option=option:mtu,1450",
		// Clients are told apart by what they send: option 93 (arch 0:
		// BIOS) and user class iPXE.
		"--dhcp-match=set:bios,option:client-arch,0",
		"--dhcp-userclass=set:ipxe,iPXE",
		"--dhcp-boot=tag:ipxe,http://10.42.0.1:8080/boot.ipxe,bootsrv,10.42.0.5",
		"--dhcp-boot=tag:!ipxe,undionly.kpxe,bootsrv,10.42.0.5")

	dc := netlab.Dhclient(r.Cli, r.Iface, netlab.ClientOpts{
		MAC:         "52:54:00:42:00:01",
		VendorClass: "PXEClient:Arch:00000:UNDI:002001",
		UserClass:   "iPXE",
		ClientArch:  netlab.Arch(0),
	})
	c2 := r.AddClientIface("c2", "")
	uc := netlab.Udhcpc(r.Cli, c2, netlab.ClientOpts{MAC: "52:54:00:42:00:99", Hostname: "probe-2"})

	l := dc.Lease()
	checkLease(t, l, netlab.Lease{
		IP: addr("10.42.0.11"), Prefix: netip.MustParsePrefix("10.42.0.11/24"),
		Routers: []netip.Addr{addr("10.42.0.1")}, DNS: []netip.Addr{addr("10.42.0.1"), addr("10.42.0.2")},
		Domain: "lab.example", Hostname: "vm-1", Filename: "http://10.42.0.1:8080/boot.ipxe", NextServer: addr("10.42.0.5"),
		ServerID: addr("10.42.0.1"), MTU: 1450, LeaseTime: time.Hour,
	})
	if l.ServerName != "bootsrv" {
		t.Errorf("dhclient: server name %q, want bootsrv", l.ServerName)
	}
	if got := r.Cli.Addrs(r.Iface); !slices.Contains(got, netip.MustParsePrefix("10.42.0.11/24")) {
		t.Errorf("dhclient's script should have put 10.42.0.11/24 on eth0 in cli: %v", got)
	}
	// What the client sent, as the server saw it.
	srv.Expect(`vendor class: PXEClient:Arch:00000:UNDI:002001`, 5*time.Second)
	srv.Expect(`user class: iPXE`, 5*time.Second)
	srv.Expect(`tags: .*\bbios\b`, 5*time.Second)
	srv.Expect(`DHCPACK\(eth0\) 10\.42\.0\.11 52:54:00:42:00:01 vm-1`, 5*time.Second)

	ul := uc.Lease()
	if !netlab.Range(addr("10.42.0.100"), addr("10.42.0.199")).Contains(ul.IP) {
		t.Errorf("udhcpc: %s is outside the dynamic range", ul.IP)
	}
	checkLease(t, ul, netlab.Lease{
		IP: ul.IP, Prefix: netip.PrefixFrom(ul.IP, 24),
		Routers: []netip.Addr{addr("10.42.0.1")}, DNS: []netip.Addr{addr("10.42.0.1"), addr("10.42.0.2")},
		Domain: "lab.example", Filename: "undionly.kpxe", NextServer: addr("10.42.0.5"),
		ServerID: addr("10.42.0.1"), MTU: 1450, LeaseTime: time.Hour,
	})
	srv.Expect(`DHCPACK\(eth0\) `+regexp.QuoteMeta(ul.IP.String())+` 52:54:00:42:00:99 probe-2`, 5*time.Second)
	if err := uc.Proc.Wait(10 * time.Second); err != nil { // -q: exits once bound
		t.Errorf("udhcpc -q: %v", err)
	}

	// The Go probe, from its own interface: one OFFER, then the ACK.
	c3 := r.AddClientIface("c3", "52:54:00:42:00:03")
	p, err := netlab.NewProbe(r.Cli, c3, netlab.ProbeOpts{Hostname: "probe-3", ClientArch: netlab.Arch(7), Wait: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	offer, ack, offers, err := p.DORA()
	if err != nil {
		t.Fatal(err)
	}
	if len(offers) != 1 || offer.Addr(netlab.OptServerID) != addr("10.42.0.1") || ack.Type() != netlab.Ack || ack.YIAddr != offer.YIAddr {
		t.Fatalf("probe: offers %d, offer %s, ack %s", len(offers), offer.Summary(), ack.Summary())
	}
	if ack.BootFile() != "undionly.kpxe" || ack.SIAddr != addr("10.42.0.5") || ack.Addr(netlab.OptSubnetMask) != addr("255.255.255.0") {
		t.Errorf("probe ack: %s mask %s", ack.Summary(), ack.Addr(netlab.OptSubnetMask))
	}
	if lt, _ := ack.Uint(netlab.OptLeaseTime); lt != 3600 {
		t.Errorf("probe ack: lease time %d", lt)
	}
	t.Logf("dhclient %s, udhcpc %s, probe %s in %s", l.IP, ul.IP, ack.YIAddr, offer.After)
	// Leases are on disk.
	for _, want := range []string{"52:54:00:42:00:01 10.42.0.11 vm-1", "52:54:00:42:00:99 " + ul.IP.String(), "52:54:00:42:00:03 " + ack.YIAddr.String()} {
		if !slices.ContainsFunc(srv.Leases(), func(s string) bool { return strings.Contains(s, want) }) {
			t.Errorf("dnsmasq's lease file lacks %q: %v", want, srv.Leases())
		}
	}
}

// proxyDHCP beside a site DHCP server: the site's dnsmasq hands out
// addresses, a second dnsmasq in proxy mode only boot information. A PXE
// client (the probe) sees both offers, binds with the site server and asks
// the proxy's boot server (port 4011) for its boot file and next server; a
// plain client (dhclient) is left to the site server.
//
// A PXE-looking dhclient is not used beside a proxy: ISC dhclient takes
// whichever OFFER comes first and, given the proxy's (yiaddr 0.0.0.0),
// requests 0.0.0.0 until it times out and starts over.
func TestLabProxyDHCP(t *testing.T) {
	netlab.RequireBinary(t, "dnsmasq", "dhclient")
	r := netlab.Rack(t)
	site := netlab.Dnsmasq(r.Srv, r.Iface, "--log-dhcp", "--no-ping",
		"--dhcp-range=10.42.0.100,10.42.0.199,255.255.255.0,1h",
		"--dhcp-option=option:router,10.42.0.1")
	prx := r.AddHost("prx", "10.42.0.2/24")
	proxy := netlab.Dnsmasq(prx, r.Iface, "--log-dhcp",
		"--dhcp-range=10.42.0.0,proxy,255.255.255.0",
		"--pxe-service=x86PC,Network boot,undionly",
		"--pxe-service=x86-64_EFI,Network boot,ipxe.efi")

	c1 := r.AddClientIface("c1", "52:54:00:42:00:21")
	p, err := netlab.NewProbe(r.Cli, c1, netlab.ProbeOpts{VendorClass: "PXEClient:Arch:00000:UNDI:002001", ClientArch: netlab.Arch(0)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	offers, err := p.Discover()
	if err != nil {
		t.Fatal(err)
	}
	var siteOffer, proxyOffer *netlab.Reply
	for _, o := range offers {
		t.Logf("from %s: %s", o.From, o.Summary())
		switch o.Addr(netlab.OptServerID) {
		case addr("10.42.0.1"):
			siteOffer = o
		case addr("10.42.0.2"):
			proxyOffer = o
		}
	}
	if len(offers) != 2 || siteOffer == nil || proxyOffer == nil {
		t.Fatalf("want one offer from each server, got %d", len(offers))
	}
	if !siteOffer.YIAddr.IsValid() || siteOffer.YIAddr.IsUnspecified() {
		t.Errorf("site offer without an address: %s", siteOffer.Summary())
	}
	if !proxyOffer.YIAddr.IsUnspecified() || proxyOffer.Text(netlab.OptVendorClass) != "PXEClient" {
		t.Errorf("proxy offer: want yiaddr 0.0.0.0 and vendor class PXEClient: %s", proxyOffer.Summary())
	}
	servers := proxyOffer.PXEBootServers()
	if !slices.Equal(servers[0x8000], []netip.Addr{addr("10.42.0.2")}) {
		t.Errorf("proxy offer's boot servers: %v", servers)
	}

	ack, _, err := p.Request(siteOffer)
	if err != nil || ack.Type() != netlab.Ack {
		t.Fatalf("site REQUEST: %v %v", err, ack)
	}
	r.Cli.AddAddr(c1, netip.PrefixFrom(ack.YIAddr, 24).String())
	boot, err := p.BootServerRequest(netip.AddrPortFrom(addr("10.42.0.2"), 4011), ack.YIAddr, 0x8000)
	if err != nil {
		t.Fatal(err)
	}
	if boot.BootFile() != "undionly.0" || boot.SIAddr != addr("10.42.0.2") {
		t.Errorf("boot server ACK: want file undionly.0 from 10.42.0.2: %s", boot.Summary())
	}
	proxy.Expect(`PXE\(eth0\) 52:54:00:42:00:21 proxy`, 5*time.Second)
	proxy.Expect(`PXE\(eth0\) `+regexp.QuoteMeta(ack.YIAddr.String())+` 52:54:00:42:00:21 undionly\.0`, 5*time.Second)

	// A plain client: the proxy stays silent, the site server serves it.
	dc := netlab.Dhclient(r.Cli, r.Iface, netlab.ClientOpts{MAC: "52:54:00:42:00:22"})
	l := dc.Lease()
	checkLease(t, l, netlab.Lease{IP: l.IP, ServerID: addr("10.42.0.1"), Routers: []netip.Addr{addr("10.42.0.1")}})
	if l.Filename != "" {
		t.Errorf("plain client got a boot file %q", l.Filename)
	}
	site.Expect(`DHCPACK\(eth0\) `+regexp.QuoteMeta(l.IP.String())+` 52:54:00:42:00:22`, 5*time.Second)
	if strings.Contains(proxy.Log(), "52:54:00:42:00:22") {
		t.Errorf("the proxy answered a non-PXE client:\n%s", proxy.Log())
	}
	t.Logf("PXE client: %s from the site server, %s from %s via the proxy; dhclient: %s", ack.YIAddr, boot.BootFile(), boot.SIAddr, l.IP)
}

// A routed segment behind a relay: ISC dhcrelay in rel forwards cli2's
// broadcasts to the server in srv with giaddr 10.43.0.1 and option 82; the
// server picks the remote subnet by giaddr and answers the relay by
// unicast at its giaddr, port 67.
func TestLabRelay(t *testing.T) {
	netlab.RequireBinary(t, "dhcrelay", "dhclient", "busybox", "tcpdump")
	servers := map[string]func(t *testing.T, r *netlab.RackNet) *netlab.Server{
		"dnsmasq": func(t *testing.T, r *netlab.RackNet) *netlab.Server {
			netlab.RequireBinary(t, "dnsmasq")
			return netlab.Dnsmasq(r.Srv, r.Iface, "--log-dhcp", "--no-ping",
				"--dhcp-range=set:local,10.42.0.100,10.42.0.199,255.255.255.0,1h",
				"--dhcp-range=set:remote,10.43.0.100,10.43.0.199,255.255.255.0,1h",
				"--dhcp-option=tag:remote,option:router,10.43.0.1",
				"--dhcp-option=tag:local,option:router,10.42.0.1")
		},
		"kea": func(t *testing.T, r *netlab.RackNet) *netlab.Server {
			netlab.RequireBinary(t, "kea-dhcp4")
			return netlab.KeaDHCP4(r.Srv, netlab.KeaConfig{
				"interfaces-config": map[string]any{"interfaces": []string{r.Iface}},
				"subnet4": []any{
					netlab.KeaSubnet(1, "10.42.0.0/24", "10.42.0.100", "10.42.0.199", "routers", "10.42.0.1"),
					netlab.KeaSubnet(2, "10.43.0.0/24", "10.43.0.100", "10.43.0.199", "routers", "10.43.0.1"),
				},
			})
		},
	}
	for _, name := range []string{"dnsmasq", "kea"} {
		t.Run(name, func(t *testing.T) {
			r := netlab.RelayRack(t)
			srv := servers[name](t, r)
			up := netlab.Tcpdump(r.Rel, r.Up)
			relay := netlab.Dhcrelay(r.Rel, []string{r.Up}, []string{r.Down}, []string{netlab.ServerIP.String()}, "-a")

			dc := netlab.Dhclient(r.Cli2, r.Iface, netlab.ClientOpts{MAC: "52:54:00:43:00:01", DefaultRoute: true})
			l := dc.Lease()
			if !netlab.Range(addr("10.43.0.100"), addr("10.43.0.199")).Contains(l.IP) || l.Prefix.Bits() != 24 {
				t.Errorf("relayed client got %s, want one of 10.43.0.100-199/24", l.Prefix)
			}
			checkLease(t, l, netlab.Lease{IP: l.IP, Routers: []netip.Addr{addr("10.43.0.1")}, ServerID: addr("10.42.0.1")})
			// The request left from the relay's upstream address with giaddr
			// 10.43.0.1 and option 82 naming the client's interface; the
			// reply came back by unicast to giaddr, port 67.
			up.Expect(`10\.42\.0\.254\.67 > 10\.42\.0\.1\.67: .*BOOTP/DHCP, Request from 52:54:00:43:00:01`, 5*time.Second)
			up.Expect(`Gateway-IP 10\.43\.0\.1`, 5*time.Second)
			up.Expect(`10\.42\.0\.1\.67 > 10\.43\.0\.1\.67: .*BOOTP/DHCP, Reply`, 5*time.Second)
			up.Expect(`Circuit-ID SubOption 1, length 4: down`, 5*time.Second)
			relay.Expect(`Forwarded BOOTREPLY for 52:54:00:43:00:01 to`, 5*time.Second)
			if name == "dnsmasq" {
				srv.Expect(`DHCPACK\(eth0\) `+regexp.QuoteMeta(l.IP.String())+` 52:54:00:43:00:01`, 5*time.Second)
			} else {
				srv.Expect(`DHCP4_LEASE_ALLOC .*hwtype=1 52:54:00:43:00:01.* lease `+regexp.QuoteMeta(l.IP.String()), 5*time.Second)
			}
			// The client, now routed, reaches the server's segment.
			if out, err := r.Cli2.Exec("ip", "route", "get", "10.42.0.1"); err != nil || !strings.Contains(out, "via 10.43.0.1") {
				t.Errorf("cli2's route to srv: %v %s", err, out)
			}

			// Then udhcpc, as another machine on the same port.
			if err := dc.Proc.Stop(); err != nil {
				t.Logf("dhclient: %v", err)
			}
			uc := netlab.Udhcpc(r.Cli2, r.Iface, netlab.ClientOpts{MAC: "52:54:00:43:00:02", Hostname: "remote-2"})
			ul := uc.Lease()
			if !netlab.Range(addr("10.43.0.100"), addr("10.43.0.199")).Contains(ul.IP) || ul.IP == l.IP {
				t.Errorf("udhcpc through the relay got %s (dhclient had %s)", ul.Prefix, l.IP)
			}
			checkLease(t, ul, netlab.Lease{IP: ul.IP, Prefix: netip.PrefixFrom(ul.IP, 24), Routers: []netip.Addr{addr("10.43.0.1")}, ServerID: addr("10.42.0.1")})
			relay.Expect(`Forwarded BOOTREPLY for 52:54:00:43:00:02 to`, 5*time.Second)
			t.Logf("%s through dhcrelay: dhclient %s, udhcpc %s", name, l.Prefix, ul.Prefix)
		})
	}
}

// perfdhcp against Kea and dnsmasq in the Pair topology, briefly: the
// runner and its parser (the measurement is BenchmarkDHCP's).
func TestLabPerfdhcp(t *testing.T) {
	netlab.RequireBinary(t, "perfdhcp")
	for _, name := range []string{"kea", "dnsmasq"} {
		t.Run(name, func(t *testing.T) {
			p := netlab.Pair(t)
			if name == "kea" {
				startKea(t, p)
			} else {
				startDnsmasq(t, p)
			}
			res, err := netlab.Perfdhcp(p.Cli, netlab.PerfOpts{Server: p.Server.String(), Local: p.Iface,
				Rate: 100, Clients: 100000, Duration: 3 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %.0f DORA/s, DO %d/%d avg %s max %s, RA %d/%d avg %s max %s, drops %.2f%%", name, res.Rate,
				res.DO.Received, res.DO.Sent, res.DO.AvgDelay, res.DO.MaxDelay,
				res.RA.Received, res.RA.Sent, res.RA.AvgDelay, res.RA.MaxDelay, 100*res.DropFraction())
			// Structure, not speed (the machine may be busy; speed is
			// BenchmarkDHCP's): exchanges ran both ways and add up.
			if res.DO.Sent < 200 || res.RA.Received == 0 || res.DO.Received > res.DO.Sent || res.RA.Sent > res.DO.Received ||
				res.RA.Received > res.RA.Sent || res.DO.AvgDelay <= 0 || res.RA.MaxDelay < res.RA.AvgDelay || res.Rate <= 0 {
				t.Errorf("perfdhcp at 100/s for 3 s: %+v %+v\n%s", res.DO, res.RA, res.Output)
			}
			av, err := netlab.Perfdhcp(p.Cli, netlab.PerfOpts{Server: p.Server.String(), Local: p.Iface,
				Scenario: "avalanche", Clients: 200, BaseMAC: "00:0c:02:00:00:00"})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: avalanche of 200 clients: %d provisioned in %s, %d resent", name, av.Provisioned, av.Took, av.Resent)
			if av.Provisioned != 200 || av.Took <= 0 || av.RA.Received != 200 {
				t.Errorf("avalanche: %d provisioned in %s, %d ACKs\n%s", av.Provisioned, av.Took, av.RA.Received, av.Output)
			}
		})
	}
}

// Failover shape: a server on srv is killed with SIGKILL while its client
// holds a lease; a standby on a second host of the same L2 (srv2), started
// with the dead server's leases, takes the client's rebinding and keeps its
// address, and serves new clients. Kiln's agents will do this with the
// leases in etcd instead of a copied file.
func TestLabFailover(t *testing.T) {
	netlab.RequireBinary(t, "dnsmasq", "busybox")
	r := netlab.Rack(t)
	args := []string{"--log-dhcp", "--no-ping", "--dhcp-authoritative",
		"--dhcp-range=10.42.0.100,10.42.0.199,255.255.255.0,1h"}
	a := netlab.Dnsmasq(r.Srv, r.Iface, args...)

	c1 := r.AddClientIface("c1", "52:54:00:42:00:41")
	p, err := netlab.NewProbe(r.Cli, c1, netlab.ProbeOpts{Wait: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	_, ack, _, err := p.DORA()
	if err != nil || ack.Type() != netlab.Ack {
		t.Fatalf("DORA with the first server: %v %v", err, ack)
	}
	held := ack.YIAddr
	r.Cli.AddAddr(c1, netip.PrefixFrom(held, 24).String()) // bound: renewals are answered by unicast
	if _, err := netlab.WaitFile(a.LeaseFile, 5*time.Second, func(b []byte) bool { return strings.Contains(string(b), held.String()) }); err != nil {
		t.Fatal(err)
	}

	a.Kill9()
	if !a.Exited() || a.ExitCode() != -1 {
		t.Fatalf("after Kill9: exited %v, code %d", a.Exited(), a.ExitCode())
	}
	// Nobody answers now.
	if reply, _, err := p.Rebind(held); reply != nil || err == nil {
		t.Fatalf("rebinding with no server: %v %v", reply, err)
	}

	srv2 := r.AddHost("srv2", "10.42.0.2/24")
	leases := r.Lab.Path("standby.leases")
	b, err := os.ReadFile(a.LeaseFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(leases, b, 0o644); err != nil {
		t.Fatal(err)
	}
	standby := netlab.Dnsmasq(srv2, r.Iface, append(args, "--dhcp-leasefile="+leases)...)
	reply, _, err := p.Rebind(held)
	if err != nil || reply.Type() != netlab.Ack || reply.YIAddr != held || reply.Addr(netlab.OptServerID) != addr("10.42.0.2") {
		t.Fatalf("rebinding with the standby: %v %v", err, reply)
	}
	uc := netlab.Udhcpc(r.Cli, r.Iface, netlab.ClientOpts{MAC: "52:54:00:42:00:42"})
	l := uc.Lease()
	if l.ServerID != addr("10.42.0.2") || l.IP == held {
		t.Errorf("new client after failover: %s from %s (held: %s)", l.IP, l.ServerID, held)
	}
	standby.Expect(`DHCPACK\(eth0\) `+regexp.QuoteMeta(held.String())+` 52:54:00:42:00:41`, 5*time.Second)
	t.Logf("kept %s across kill -9 of the first server; new client got %s from the standby", held, l.IP)
}

// A QEMU guest on a tap in the rack's bridge: SeaBIOS runs the iPXE ROM
// (TCG), which asks for an address with user class iPXE and client arch 0,
// and gets one from dnsmasq in srv.
func TestLabQEMUiPXE(t *testing.T) {
	netlab.RequireBinary(t, "dnsmasq", "qemu-system-x86_64")
	r := netlab.Rack(t)
	srv := netlab.Dnsmasq(r.Srv, r.Iface, "--log-dhcp", "--no-ping",
		"--dhcp-range=10.42.0.100,10.42.0.199,255.255.255.0,1h",
		"--dhcp-host=52:54:00:42:00:31,10.42.0.31,vm-31",
		"--dhcp-match=set:bios,option:client-arch,0",
		"--dhcp-userclass=set:ipxe,iPXE")
	tap := r.Tap("tap0")
	vm := netlab.QEMU(r.Switch, netlab.QEMUOpts{Tap: tap, MAC: "52:54:00:42:00:31"})
	line, err := srv.WaitLog(`DHCPACK\(eth0\) 10\.42\.0\.31 52:54:00:42:00:31`, 90*time.Second)
	if err != nil {
		t.Fatalf("%v\nQEMU:\n%s", err, vm.Log())
	}
	srv.Expect(`tags: .*\bipxe\b`, 5*time.Second)
	srv.Expect(`tags: .*\bbios\b`, 5*time.Second)
	srv.Expect(`vendor class: PXEClient:Arch:00000:UNDI:002001`, 5*time.Second)
	t.Logf("%s", line)
	if vm.Exited() {
		t.Errorf("QEMU exited: %s", vm.Log())
	}
}

// The lab cleans up after itself: processes stopped, namespaces gone,
// also those a dead test process left behind.
func TestLabCleanup(t *testing.T) {
	netlab.Require(t)
	var prefix string
	var pids []int
	t.Run("lab", func(t *testing.T) {
		r := netlab.RelayRack(t)
		r.Lab.StopTimeout = 2 * time.Second
		prefix = r.Lab.Prefix
		if got := netlab.ListNamespaces(prefix); len(got) != 5 {
			t.Fatalf("namespaces %v, want sw, srv, cli, rel, cli2", got)
		}
		// A process that ignores SIGTERM is killed after StopTimeout; one that
		// exits early is fine too.
		stubborn := r.Srv.Start("stubborn", "sh", "-c", `trap "" TERM; echo ready; while :; do sleep 1; done`)
		stubborn.Expect(`ready`, 5*time.Second)
		quick := r.Cli.Start("quick", "sh", "-c", "echo bye")
		if err := quick.Wait(5 * time.Second); err != nil || quick.ExitCode() != 0 {
			t.Fatalf("quick: %v", err)
		}
		if _, err := quick.WaitLog(`never printed`, time.Second); err == nil || !strings.Contains(err.Error(), "exited") {
			t.Fatalf("waiting for a line from an exited process: %v", err)
		}
		pids = []int{stubborn.Pid(), quick.Pid()}
	})
	if left := netlab.ListNamespaces(prefix); len(left) > 0 {
		t.Errorf("namespaces left behind: %v", left)
	}
	for _, pid := range pids {
		if err := syscallKill0(pid); err == nil {
			t.Errorf("process %d still alive", pid)
		}
	}

	// A namespace named by a test process that is gone is removed by the
	// next lab, with what runs in it.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := fmt.Sprintf("kl%dx1-stale", dead.Process.Pid)
	if out, err := exec.Command("ip", "netns", "add", stale).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", stale).Run() })
	sleeper := exec.Command("ip", "netns", "exec", stale, "sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- sleeper.Wait() }()
	// Only a process already inside can be found there: wait until
	// `ip netns exec` has entered the namespace and run sleep.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if out, _ := exec.Command("ip", "netns", "pids", stale).Output(); len(strings.TrimSpace(string(out))) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the process never entered namespace %s", stale)
		}
	}
	netlab.New(t)
	if left := netlab.ListNamespaces(stale); len(left) > 0 {
		t.Errorf("stale namespace %s was not removed", stale)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		sleeper.Process.Kill()
		t.Errorf("the process in the stale namespace was not killed")
	}
}

func syscallKill0(pid int) error { return syscall.Kill(pid, 0) }
