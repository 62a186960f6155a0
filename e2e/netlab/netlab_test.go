package netlab

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// These tests need neither root nor network namespaces: they check the
// parsers and the DHCP codec. The lab itself is proven by e2e/dhcplab_test.go
// (build tag e2e) against dnsmasq, Kea and ISC dhcrelay.

func TestParsePerfdhcpBasic(t *testing.T) {
	b, err := os.ReadFile("testdata/perfdhcp-basic.txt")
	if err != nil {
		t.Fatal(err)
	}
	r, err := ParsePerfdhcp(string(b))
	if err != nil {
		t.Fatal(err)
	}
	if r.Rate != 999.611 || r.ExpectedRate != 1000 || r.Malformed != 0 {
		t.Errorf("rate %v expected %v malformed %d", r.Rate, r.ExpectedRate, r.Malformed)
	}
	if r.DO.Sent != 4999 || r.DO.Received != 4999 || r.DO.Drops != 0 || r.DO.AvgDelay != 226*time.Microsecond || r.DO.MaxDelay != 4427*time.Microsecond {
		t.Errorf("DISCOVER-OFFER %+v", r.DO)
	}
	if r.RA.Received != 4950 || r.RA.Drops != 49 || r.RA.DropRatio != 0.98 || r.RA.MinDelay != 90*time.Microsecond || r.RA.StdDev != 179*time.Microsecond {
		t.Errorf("REQUEST-ACK %+v", r.RA)
	}
	if got := r.DropFraction(); got < 0.0097 || got > 0.0099 {
		t.Errorf("drop fraction %v, want 49/4999", got)
	}
	if r.Took != 0 || r.Provisioned != 0 {
		t.Errorf("basic run with avalanche figures: %+v", r)
	}
}

func TestParsePerfdhcpAvalanche(t *testing.T) {
	b, err := os.ReadFile("testdata/perfdhcp-avalanche.txt")
	if err != nil {
		t.Fatal(err)
	}
	r, err := ParsePerfdhcp(string(b))
	if err != nil {
		t.Fatal(err)
	}
	if r.Rate != 414.435 || r.ExpectedRate != 0 {
		t.Errorf("rate %v expected %v", r.Rate, r.ExpectedRate)
	}
	if r.Took != 2412672*time.Microsecond || r.Provisioned != 1000 || r.Sent != 2842 || r.Resent != 842 || r.Responses != 2000 {
		t.Errorf("avalanche: took %s provisioned %d sent %d resent %d responses %d", r.Took, r.Provisioned, r.Sent, r.Resent, r.Responses)
	}
	if r.RA.MaxDelay != 2200142*time.Microsecond {
		t.Errorf("RA max %s", r.RA.MaxDelay)
	}
	if _, err := ParsePerfdhcp("perfdhcp: error: no such interface"); err == nil {
		t.Error("no statistics should be an error")
	}
}

func TestParseLease(t *testing.T) {
	dh := map[string]string{
		"netlab_event": "BOUND", "reason": "BOUND", "interface": "eth0",
		"new_ip_address": "10.42.0.11", "new_subnet_mask": "255.255.255.0", "new_routers": "10.42.0.1",
		"new_domain_name_servers": "10.42.0.1 10.42.0.2", "new_domain_name": "lab.example", "new_host_name": "vm-1",
		"new_dhcp_server_identifier": "10.42.0.1", "new_dhcp_lease_time": "3600", "new_interface_mtu": "1450",
		"new_next_server": "10.42.0.5", "new_filename": "undionly.kpxe", "new_server_name": "bootsrv",
	}
	l, err := ParseLease("dhclient", dh)
	if err != nil {
		t.Fatal(err)
	}
	want := Lease{Client: "dhclient", Event: "BOUND", IP: netip.MustParseAddr("10.42.0.11"), Prefix: netip.MustParsePrefix("10.42.0.11/24"),
		Domain: "lab.example", Hostname: "vm-1", ServerID: netip.MustParseAddr("10.42.0.1"), LeaseTime: time.Hour, MTU: 1450,
		NextServer: netip.MustParseAddr("10.42.0.5"), Filename: "undionly.kpxe", ServerName: "bootsrv"}
	if l.IP != want.IP || l.Prefix != want.Prefix || l.Domain != want.Domain || l.Hostname != want.Hostname || l.ServerID != want.ServerID ||
		l.LeaseTime != want.LeaseTime || l.MTU != want.MTU || l.NextServer != want.NextServer || l.Filename != want.Filename || l.ServerName != want.ServerName ||
		len(l.DNS) != 2 || len(l.Routers) != 1 {
		t.Errorf("dhclient lease\n got %+v\nwant %+v", *l, want)
	}
	ud := map[string]string{
		"netlab_event": "bound", "interface": "c2", "ip": "10.42.0.117", "mask": "24", "subnet": "255.255.255.0",
		"router": "10.42.0.1", "dns": "10.42.0.1 10.42.0.2", "domain": "lab.example", "serverid": "10.42.0.1",
		"lease": "3600", "mtu": "1450", "siaddr": "0.0.0.0", "bootfile": "undionly.kpxe", "hostname": "probe-2",
	}
	l, err = ParseLease("udhcpc", ud)
	if err != nil {
		t.Fatal(err)
	}
	if l.Prefix != netip.MustParsePrefix("10.42.0.117/24") || l.NextServer.IsValid() || l.Filename != "undionly.kpxe" || l.Hostname != "probe-2" || l.LeaseTime != time.Hour {
		t.Errorf("udhcpc lease %+v", *l)
	}
	if _, err := ParseLease("dhclient", map[string]string{"reason": "PREINIT"}); err == nil {
		t.Error("an event without an address should be an error")
	}
	for mask, bits := range map[string]int{"255.192.0.0": 10, "255.255.255.255": 32, "0.0.0.0": 0, "": -1} {
		if got := maskBits(mask); got != bits {
			t.Errorf("maskBits(%q) = %d, want %d", mask, got, bits)
		}
	}
}

// The recording script is valid sh and records an event as the parser
// expects, without touching anything when told not to assign.
func TestRecordScript(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	dir := t.TempDir()
	script := filepath.Join(dir, "script")
	if err := os.WriteFile(script, []byte(recordScriptFor(dir, false, false)), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(script, "leasefail")
	cmd.Env = []string{"PATH=/usr/bin:/bin", "interface=none0", "ip=10.0.0.9"}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	c := &Client{Kind: "udhcpc", Dir: dir}
	evs := c.Events()
	if len(evs) != 1 || evs[0].Name != "leasefail" || evs[0].Vars["ip"] != "10.0.0.9" || evs[0].Vars["interface"] != "none0" {
		t.Fatalf("events %+v", evs)
	}
}

func TestPacketRoundTrip(t *testing.T) {
	p := &Packet{Op: 1, XID: 0xdeadbeef, Flags: 0x8000, CHAddr: MustMAC("52:54:00:42:00:01"),
		GIAddr: netip.MustParseAddr("10.43.0.1"), File: "undionly.kpxe",
		Options: map[byte][]byte{OptMsgType: {Discover}, OptVendorClass: []byte("PXEClient:Arch:00000:UNDI:002001"),
			OptClientArch: {0, 7}, OptRouter: {10, 42, 0, 1, 10, 42, 0, 2}, OptUserClass: []byte(strings.Repeat("x", 300))}}
	b := p.Marshal()
	if len(b) < 300 || b[240] != 53 {
		t.Fatalf("%d bytes, first option %d (want 53 first)", len(b), b[240])
	}
	q, err := ParsePacket(b)
	if err != nil {
		t.Fatal(err)
	}
	if q.XID != p.XID || q.Type() != Discover || q.TypeName() != "DISCOVER" || q.GIAddr != p.GIAddr || q.File != p.File || q.CHAddr.String() != "52:54:00:42:00:01" || q.Flags != 0x8000 {
		t.Errorf("round trip: %s", q.Summary())
	}
	if v, ok := q.Uint(OptClientArch); !ok || v != 7 {
		t.Errorf("arch %d", v)
	}
	if got := q.Addrs(OptRouter); !slices.Equal(got, []netip.Addr{netip.MustParseAddr("10.42.0.1"), netip.MustParseAddr("10.42.0.2")}) {
		t.Errorf("routers %v", got)
	}
	if len(q.Options[OptUserClass]) != 300 {
		t.Errorf("a 300-byte option split and joined back (RFC 3396): %d bytes", len(q.Options[OptUserClass]))
	}
	if _, err := ParsePacket(b[:200]); err == nil {
		t.Error("short packet accepted")
	}
}

func TestPXEBootServers(t *testing.T) {
	// dnsmasq 2.90's proxy offer, option 43 (captured).
	opt43 := []byte{0x06, 0x01, 0x03, 0x0a, 0x04, 0x00, 0x50, 0x58, 0x45, 0x08, 0x07, 0x80, 0x00, 0x01, 0x0a, 0x2a, 0x00, 0x02,
		0x09, 0x0f, 0x80, 0x00, 0x0c, 'N', 'e', 't', 'w', 'o', 'r', 'k', ' ', 'b', 'o', 'o', 't', 0xff}
	p := &Packet{Options: map[byte][]byte{OptVendorOpts: opt43}}
	got := p.PXEBootServers()
	if len(got) != 1 || !slices.Equal(got[0x8000], []netip.Addr{netip.MustParseAddr("10.42.0.2")}) {
		t.Errorf("boot servers %v", got)
	}
}

func TestUDP4Checksum(t *testing.T) {
	b := udp4(netip.IPv4Unspecified(), 68, netip.MustParseAddr("255.255.255.255"), 67, []byte("hello, dhcp"))
	if checksum(b[:20], 0) != 0 {
		t.Error("IP header checksum does not verify")
	}
	u := b[20:]
	pseudo := uint32(0xffff) + 0xffff + 17 + uint32(len(u))
	if checksum(u, pseudo) != 0 {
		t.Error("UDP checksum does not verify")
	}
}
