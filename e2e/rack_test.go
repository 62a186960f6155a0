//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kilnhq/kiln/e2e/netlab"
	"github.com/kilnhq/kiln/spec/kilntest"
)

// Kiln's rack agent in the netlab topologies, with real DHCP clients
// (dhclient, udhcpc, iPXE in QEMU, the Go probe), a real relay (dhcrelay)
// and a real site DHCP server (dnsmasq) beside Kiln's proxyDHCP. Kiln
// runs inside srv: `kiln server` with its embedded etcd on srv's
// loopback, and one or more `kiln rack` agents.

const rackInventory = `
apiVersion: kiln.dev/v1alpha1
kind: Rack
metadata: {name: r1}
---
apiVersion: kiln.dev/v1alpha1
kind: Subnet
metadata: {name: lab-net}
spec:
  cidr: 10.42.0.0/24
  rack: r1
  mode: %s
  gateway: 10.42.0.1
  dns: [10.42.0.1]
  domain: lab.kiln.test
  mtu: 1400
  dynamicRange: {start: 10.42.0.200, end: 10.42.0.250}
  reserved: [{start: 10.42.0.2, end: 10.42.0.9}]
  leaseTime: 10m
---
apiVersion: kiln.dev/v1alpha1
kind: Subnet
metadata: {name: remote-net}
spec:
  cidr: 10.43.0.0/24
  rack: r1
  mode: relay
  gateway: 10.43.0.1
  dynamicRange: {start: 10.43.0.100, end: 10.43.0.150}
---
apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata: {name: m-static}
spec:
  firmware: bios
  interfaces: [{name: eno1, mac: "52:54:00:00:00:11", subnet: lab-net, ip: 10.42.0.11}]
  bmc: {driver: manual}
---
apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata: {name: m-auto}
spec:
  interfaces: [{name: eno1, mac: "52:54:00:00:00:12", subnet: lab-net, ip: auto}]
  bmc: {driver: manual}
---
apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata: {name: m-vm}
spec:
  firmware: bios
  interfaces: [{name: eno1, mac: "52:54:00:00:00:13", subnet: lab-net, ip: 10.42.0.13}]
  bmc: {driver: manual}
---
apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata: {name: m-remote}
spec:
  rack: r1
  interfaces: [{name: eno1, mac: "52:54:00:00:00:21", subnet: remote-net, ip: 10.43.0.21}]
  bmc: {driver: manual}
`

// kilnRack is Kiln running in srv.
type kilnRack struct {
	t         *testing.T
	r         *netlab.RackNet
	src, data string
	server    *netlab.Proc
	agents    []*netlab.Proc
}

// startServer (re)starts kiln server and its embedded etcd on the same
// data directory.
func (k *kilnRack) startServer() {
	k.t.Helper()
	k.server = k.r.Srv.Start("kiln-server", kilnBin, "server", "--source", k.src, "--data-dir", k.data,
		"--etcd-listen-client", "http://127.0.0.1:2379", "--etcd-listen-peer", "http://127.0.0.1:2380", "--listen", "127.0.0.1:9420")
	k.server.Expect(`revision (already )?applied`, 60*time.Second)
}

func startKilnRack(t *testing.T, r *netlab.RackNet, mode string, agents int) *kilnRack {
	t.Helper()
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "rack.yaml"), []byte(fmt.Sprintf(rackInventory, mode)), 0o644); err != nil {
		t.Fatal(err)
	}
	k := &kilnRack{t: t, r: r, src: src, data: t.TempDir()}
	k.startServer()
	for i := 0; i < agents; i++ {
		k.startAgent(fmt.Sprintf("agent-%d", i), nil)
	}
	if agents > 0 {
		k.leader()
	}
	return k
}

// leader waits until one agent leads and returns it with the others.
func (k *kilnRack) leader() (*netlab.Proc, []*netlab.Proc) {
	k.t.Helper()
	lead := -1
	kilntest.Eventually(k.t, 60*time.Second, "an agent to lead", func() bool {
		lead = slices.IndexFunc(k.agents, func(a *netlab.Proc) bool { return strings.Contains(a.Log(), "leading the rack") })
		return lead >= 0
	})
	return k.agents[lead], slices.Delete(slices.Clone(k.agents), lead, lead+1)
}

// startAgent runs `kiln rack` in srv, behind the command prefix wrap
// (e.g. setpriv), with extra flags.
func (k *kilnRack) startAgent(id string, wrap []string, extra ...string) *netlab.Proc {
	k.t.Helper()
	args := append(append([]string(nil), wrap...), kilnBin, "rack", "--rack", "r1", "--agent-id", id, "--interfaces", k.r.Iface,
		"--listen", "127.0.0.1:"+fmt.Sprint(9500+len(k.agents)), "--log-level", "debug")
	args = append(args, extra...)
	p := k.r.Srv.StartCmd(netlab.Cmd{Name: id, Args: args})
	k.agents = append(k.agents, p)
	return p
}

// kiln runs the CLI inside srv.
func (k *kilnRack) kiln(args ...string) string {
	k.t.Helper()
	out, err := k.r.Srv.Exec(append([]string{kilnBin}, args...)...)
	if err != nil {
		k.t.Fatalf("kiln %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// waitCLI re-runs a CLI command until its output satisfies ok.
func (k *kilnRack) waitCLI(what string, ok func(string) bool, args ...string) string {
	k.t.Helper()
	var out string
	eventually(k.t, 30*time.Second, what, func() string { return "last output:\n" + out }, func() bool {
		out, _ = k.r.Srv.Exec(append([]string{kilnBin}, args...)...)
		return ok(out)
	})
	return out
}

func TestRackDHCPRealClients(t *testing.T) {
	netlab.Require(t)
	netlab.RequireBinary(t, "dhclient", "busybox")
	r := netlab.Rack(t)
	k := startKilnRack(t, r, "managed", 1)

	// dhclient as a BIOS PXE ROM would identify itself, for the static
	// reservation: address, options, TFTP boot file.
	l := netlab.Dhclient(r.Cli, r.Iface, netlab.ClientOpts{MAC: "52:54:00:00:00:11",
		VendorClass: "PXEClient:Arch:00000:UNDI:002001", ClientArch: netlab.Arch(0), NoAssign: true}).Lease()
	checkLease(t, l, netlab.Lease{IP: addr("10.42.0.11"), Prefix: netip.MustParsePrefix("10.42.0.11/24"),
		Routers: []netip.Addr{addr("10.42.0.1")}, DNS: []netip.Addr{addr("10.42.0.1")}, Domain: "lab.kiln.test",
		Hostname: "m-static", Filename: "undionly.kpxe", NextServer: addr("10.42.0.1")})
	if l.MTU != 1400 || l.LeaseTime != 10*time.Minute {
		t.Errorf("mtu %d lease %s, want 1400 and 10m", l.MTU, l.LeaseTime)
	}

	// busybox udhcpc as iPXE would (user class iPXE), for the machine
	// whose address is allocated once: the HTTP script URL.
	ifc := r.AddClientIface("auto0", "52:54:00:00:00:12")
	la := netlab.Udhcpc(r.Cli, ifc, netlab.ClientOpts{UserClass: "iPXE", VendorClass: "PXEClient:Arch:00000:UNDI:002001", ClientArch: netlab.Arch(0), NoAssign: true}).Lease()
	if !netip.MustParsePrefix("10.42.0.0/24").Contains(la.IP) || (la.IP.Compare(addr("10.42.0.200")) >= 0 && la.IP.Compare(addr("10.42.0.250")) <= 0) ||
		(la.IP.Compare(addr("10.42.0.2")) >= 0 && la.IP.Compare(addr("10.42.0.9")) <= 0) || la.IP == addr("10.42.0.1") {
		t.Errorf("m-auto got %s: want an address outside the dynamic and reserved ranges", la.IP)
	}
	if want := "http://10.42.0.1:8080/boot/52:54:00:00:00:12/script.ipxe"; la.Filename != want {
		t.Errorf("iPXE boot file %q, want %q", la.Filename, want)
	}
	// The allocated address is kept: the same on a second DORA.
	la2 := netlab.Udhcpc(r.Cli, ifc, netlab.ClientOpts{NoAssign: true}).Lease()
	if la2.IP != la.IP {
		t.Errorf("m-auto got %s then %s: an allocated-once address must stay", la.IP, la2.IP)
	}

	// An unknown MAC: a dynamic address, and it appears as discovered.
	unk := r.AddClientIface("unk0", "02:aa:00:00:00:01")
	lu := netlab.Dhclient(r.Cli, unk, netlab.ClientOpts{VendorClass: "PXEClient:Arch:00007:UNDI:003016", ClientArch: netlab.Arch(7), NoAssign: true}).Lease()
	if lu.IP.Compare(addr("10.42.0.200")) < 0 || lu.IP.Compare(addr("10.42.0.250")) > 0 {
		t.Errorf("unknown MAC got %s, want one from the dynamic range", lu.IP)
	}
	if lu.Filename != "ipxe.efi" {
		t.Errorf("UEFI x64 boot file %q, want ipxe.efi", lu.Filename)
	}
	out := k.waitCLI("the unknown MAC to be discovered", func(s string) bool {
		return strings.Contains(s, "02:aa:00:00:00:01") && strings.Contains(s, lu.IP.String())
	}, "get", "discovered")
	if !strings.Contains(out, "uefi") {
		t.Errorf("discovered record lacks the architecture:\n%s", out)
	}
	exported := k.kiln("export", "discovered")
	if !strings.Contains(exported, `mac: "02:aa:00:00:00:01"`) || !strings.Contains(exported, "kind: Machine") {
		t.Errorf("kiln export discovered:\n%s", exported)
	}

	// The boot timeline of a known machine, and the leases.
	k.waitCLI("m-static's timeline", func(s string) bool {
		return strings.Contains(s, "dhcp-seen") && strings.Contains(s, "dhcp-offered") && strings.Contains(s, "dhcp-acked") && strings.Contains(s, "arch=bios")
	}, "describe", "machine", "m-static")
	leases := k.kiln("get", "leases")
	for _, want := range []string{"10.42.0.11", la.IP.String(), lu.IP.String(), "reserved", "dynamic"} {
		if !strings.Contains(leases, want) {
			t.Errorf("kiln get leases lacks %s:\n%s", want, leases)
		}
	}
}

func TestRackQEMUiPXE(t *testing.T) {
	netlab.Require(t)
	netlab.RequireBinary(t, "qemu-system-x86_64")
	r := netlab.Rack(t)
	k := startKilnRack(t, r, "managed", 1)

	served := serveScripts(t, r)
	vm := netlab.QEMU(r.Switch, netlab.QEMUOpts{Tap: r.Tap("tap0"), MAC: "52:54:00:00:00:13"})
	vm.Expect(`kiln-e2e-script-served`, 180*time.Second)
	got := served()
	if len(got) == 0 || got[0] != "/boot/52:54:00:00:00:13/script.ipxe" {
		t.Fatalf("script requests %v, want /boot/52:54:00:00:00:13/script.ipxe", got)
	}
	if !strings.Contains(vm.Log(), "10.42.0.13") {
		t.Errorf("iPXE did not report its reservation 10.42.0.13:\n%s", vm.Log())
	}
	k.waitCLI("the VM's timeline", func(s string) bool {
		return strings.Contains(s, "dhcp-acked") && strings.Contains(s, "user_class=iPXE")
	},
		"describe", "machine", "m-vm")
}

func TestRackProxyBesideDnsmasq(t *testing.T) {
	netlab.Require(t)
	netlab.RequireBinary(t, "dnsmasq", "dhclient", "qemu-system-x86_64")
	r := netlab.Rack(t)
	// The site's DHCP server, on its own host of the rack's L2.
	site := r.AddHost("site", "10.42.0.2/24")
	netlab.Dnsmasq(site, r.Iface, "--dhcp-range=10.42.0.100,10.42.0.150,255.255.255.0,1h", "--dhcp-option=option:router,10.42.0.2")
	k := startKilnRack(t, r, "proxy", 1)

	// An ordinary client is the site server's alone: Kiln stays silent.
	l := netlab.Dhclient(r.Cli, r.Iface, netlab.ClientOpts{MAC: "02:dd:00:00:00:01", NoAssign: true}).Lease()
	if l.IP.Compare(addr("10.42.0.100")) < 0 || l.IP.Compare(addr("10.42.0.150")) > 0 || l.ServerID != addr("10.42.0.2") || l.Filename != "" {
		t.Fatalf("address %s from %s, boot file %q: want one of dnsmasq's, no boot file", l.IP, l.ServerID, l.Filename)
	}

	// A PXE ROM sees both answers: dnsmasq's address and Kiln's boot
	// offer, which carries none. (A ROM collects offers for seconds; so
	// does the probe, as dnsmasq checks a new address before offering.)
	probe, err := netlab.NewProbe(r.Cli, r.Iface, netlab.ProbeOpts{MAC: "02:dd:00:00:00:02",
		VendorClass: "PXEClient:Arch:00000:UNDI:002001", ClientArch: netlab.Arch(0), Wait: 6 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	replies, err := probe.Discover()
	if err != nil {
		t.Fatal(err)
	}
	var fromSite, fromKiln *netlab.Reply
	for _, rep := range replies {
		t.Logf("offer from %s: %s", rep.From, rep.Summary())
		switch rep.From.Addr() {
		case addr("10.42.0.2"):
			fromSite = rep
		case addr("10.42.0.1"):
			fromKiln = rep
		}
	}
	if fromSite == nil || fromKiln == nil {
		t.Fatalf("want offers from dnsmasq and from Kiln, got %d replies", len(replies))
	}
	if !fromKiln.YIAddr.IsUnspecified() || fromKiln.BootFile() != "undionly.kpxe" || fromKiln.Text(netlab.OptVendorClass) != "PXEClient" {
		t.Errorf("Kiln's proxy offer: address %s, boot file %q, vendor class %q", fromKiln.YIAddr, fromKiln.BootFile(), fromKiln.Text(netlab.OptVendorClass))
	}
	// Having taken dnsmasq's address, the ROM asks Kiln's boot server on
	// port 4011, and answers ARP for its address while it waits.
	r.Cli.AddAddr(r.Iface, netip.PrefixFrom(fromSite.YIAddr, 24).String())
	ack, err := probe.BootServerRequest(netip.AddrPortFrom(addr("10.42.0.1"), 4011), fromSite.YIAddr, 0)
	if err != nil || ack == nil || ack.BootFile() != "undionly.kpxe" {
		t.Fatalf("Kiln's PXE boot server on 4011: %v %+v", err, ack)
	}

	// A real iPXE ROM: its address from dnsmasq, its script from Kiln.
	served := serveScripts(t, r)
	vm := netlab.QEMU(r.Switch, netlab.QEMUOpts{Tap: r.Tap("tap0"), MAC: "52:54:00:00:00:13"})
	vm.Expect(`kiln-e2e-script-served`, 180*time.Second)
	if got := served(); len(got) == 0 || got[0] != "/boot/52:54:00:00:00:13/script.ipxe" {
		t.Fatalf("script requests %v", got)
	}
	if !regexpFind(`10\.42\.0\.1[0-4][0-9]`, vm.Log()) {
		t.Errorf("the VM did not take an address from dnsmasq's range:\n%s", vm.Log())
	}
	k.waitCLI("the proxy exchange on the VM's timeline", func(s string) bool { return strings.Contains(s, "dhcp-") }, "describe", "machine", "m-vm")
}

// serveScripts stands in for the HTTP boot server (the next stage) on
// 10.42.0.1:8080 in srv: it records script requests and tells iPXE to
// print a marker and power off.
func serveScripts(t *testing.T, r *netlab.RackNet) func() []string {
	var mu sync.Mutex
	var requests []string
	var ln net.Listener
	if err := r.Srv.Do(func() (err error) { ln, err = net.Listen("tcp", "10.42.0.1:8080"); return err }); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		mu.Lock()
		requests = append(requests, req.URL.Path)
		mu.Unlock()
		fmt.Fprint(w, "#!ipxe\necho kiln-e2e-script-served\npoweroff\n")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), requests...)
	}
}

func regexpFind(re, s string) bool { return regexp.MustCompile(re).MatchString(s) }

func TestRackRelay(t *testing.T) {
	netlab.Require(t)
	netlab.RequireBinary(t, "dhcrelay", "dhclient")
	r := netlab.RelayRack(t)
	k := startKilnRack(t, r, "managed", 1)
	netlab.Dhcrelay(r.Rel, []string{r.Up}, []string{r.Down}, []string{netlab.ServerIP.String()}, "-a")

	l := netlab.Dhclient(r.Cli2, r.Iface, netlab.ClientOpts{MAC: "52:54:00:00:00:21", NoAssign: true}).Lease()
	checkLease(t, l, netlab.Lease{IP: addr("10.43.0.21"), Routers: []netip.Addr{addr("10.43.0.1")}, Hostname: "m-remote"})
	k.waitCLI("the relay's circuit ID on m-remote's timeline", func(s string) bool {
		return strings.Contains(s, "dhcp-acked") && strings.Contains(s, "relay=10.43.0.1") && strings.Contains(s, "circuit=")
	}, "describe", "machine", "m-remote")
	// An unknown client behind the relay gets the remote dynamic range.
	u := netlab.Dhclient(r.Cli2, r.Iface, netlab.ClientOpts{MAC: "02:bb:00:00:00:01", NoAssign: true}).Lease()
	if u.IP.Compare(addr("10.43.0.100")) < 0 || u.IP.Compare(addr("10.43.0.150")) > 0 {
		t.Errorf("unknown client behind the relay got %s", u.IP)
	}
}

func TestRackFailoverKill9(t *testing.T) {
	netlab.Require(t)
	r := netlab.Rack(t)
	k := startKilnRack(t, r, "managed", 2)
	leader, others := k.leader()
	standby := others[0]
	standby.Expect(`rack view loaded`, 60*time.Second)

	// A client holds a lease from the leader.
	first, err := netlab.NewProbe(r.Cli, r.Iface, netlab.ProbeOpts{MAC: "52:54:00:00:00:12", Wait: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	_, ack, _, err := first.DORA()
	if err != nil || ack == nil {
		t.Fatalf("first client: %v", err)
	}
	held := ack.YIAddr
	k.waitCLI("the lease to be stored", func(s string) bool { return strings.Contains(s, held.String()) }, "get", "leases")

	// kill -9 the leader; from that moment a renewal and a new client must
	// both succeed.
	mark := standby.Mark()
	killed := time.Now()
	leader.Kill9()
	second, err := netlab.NewProbe(r.Cli, r.AddClientIface("new0", "02:cc:00:00:00:01"), netlab.ProbeOpts{Wait: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	var renewed, fresh time.Duration
	var freshIP netip.Addr
	deadline := killed.Add(30 * time.Second)
	for (renewed == 0 || fresh == 0) && time.Now().Before(deadline) {
		if renewed == 0 {
			if rep, _, err := first.InitReboot(held); err == nil && rep != nil && rep.Type() == netlab.Ack && rep.YIAddr == held {
				renewed = time.Since(killed)
			}
		}
		if fresh == 0 {
			if _, a, _, err := second.DORA(); err == nil && a != nil {
				fresh, freshIP = time.Since(killed), a.YIAddr
			}
		}
	}
	if _, err := standby.WaitLogFrom(mark, `leading the rack`, time.Second); err != nil {
		t.Errorf("the standby never said it leads: %v", err)
	}
	t.Logf("after kill -9 of the leader: renewal acknowledged in %s, a new client served in %s (session TTL 2s)",
		renewed.Round(time.Millisecond), fresh.Round(time.Millisecond))
	if renewed == 0 || fresh == 0 {
		t.Fatalf("after kill -9: renewed %v, new client %v\nstandby log:\n%s", renewed, fresh, standby.Log())
	}
	// The target is 3 s; the bound here leaves room for a loaded machine
	// (the figure above is what to watch).
	if renewed > 6*time.Second || fresh > 6*time.Second {
		t.Errorf("failover too slow: renewal %s, new client %s", renewed, fresh)
	}
	if freshIP == held {
		t.Fatalf("the new client got %s, which the first client holds", held)
	}
	// No address is ever given to two MACs.
	var list struct{ Items []struct{ IP, MAC string } }
	if err := json.Unmarshal([]byte(k.kiln("get", "leases", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	owner := map[string]string{}
	for _, l := range list.Items {
		if prev, ok := owner[l.IP]; ok && prev != l.MAC {
			t.Errorf("%s given to %s and %s", l.IP, prev, l.MAC)
		}
		owner[l.IP] = l.MAC
	}
}

// With etcd gone, the leader keeps answering known reservations from its
// cache and stores nothing new; when etcd returns it catches up.
func TestRackServesReservationsWhileEtcdIsAway(t *testing.T) {
	netlab.Require(t)
	r := netlab.Rack(t)
	k := startKilnRack(t, r, "managed", 1)
	agent, _ := k.leader()
	// "leading the rack" comes just before DHCP listens: a DISCOVER sent
	// in between is lost, so wait for the DHCP server itself.
	kilntest.Eventually(t, 30*time.Second, "the leader's DHCP server", func() bool { return strings.Contains(agent.Log(), "serving interface") })
	known, err := netlab.NewProbe(r.Cli, r.Iface, netlab.ProbeOpts{MAC: "52:54:00:00:00:11", Wait: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer known.Close()
	if _, ack, _, err := known.DORA(); err != nil || ack == nil || ack.YIAddr != addr("10.42.0.11") {
		t.Fatalf("before: %v %+v", err, ack)
	}

	mark := agent.Mark()
	if err := k.server.Stop(); err != nil {
		t.Logf("kiln server stop: %v", err)
	}
	if _, err := agent.WaitLogFrom(mark, `lost the election session; serving known reservations`, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, ack, _, err := known.DORA(); err != nil || ack == nil || ack.YIAddr != addr("10.42.0.11") {
		t.Fatalf("a known reservation while etcd is away: %v %+v", err, ack)
	}
	stranger, err := netlab.NewProbe(r.Cli, r.AddClientIface("new0", "02:ee:00:00:00:01"), netlab.ProbeOpts{Wait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	if _, ack, _, _ := stranger.DORA(); ack != nil {
		t.Fatalf("a new client was acknowledged %s while nothing could be stored", ack.YIAddr)
	}

	// etcd returns: the agent leads again and serves new clients.
	mark = agent.Mark()
	k.startServer()
	if _, err := agent.WaitLogFrom(mark, `leading the rack`, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	var got netip.Addr
	deadline := time.Now().Add(30 * time.Second)
	for !got.IsValid() && time.Now().Before(deadline) {
		if _, ack, _, _ := stranger.DORA(); ack != nil {
			got = ack.YIAddr
		}
	}
	if got.Compare(addr("10.42.0.200")) < 0 || got.Compare(addr("10.42.0.250")) > 0 {
		t.Fatalf("after etcd returned the new client got %v", got)
	}
	k.waitCLI("the new lease to be stored", func(s string) bool { return strings.Contains(s, got.String()) }, "get", "leases")
}

// The rack agent as an unprivileged user with only the two capabilities
// the systemd unit grants.
func TestRackAgentWithoutRoot(t *testing.T) {
	netlab.Require(t)
	netlab.RequireBinary(t, "setpriv", "dhclient")
	if err := os.Chmod(filepath.Dir(kilnBin), 0o755); err != nil {
		t.Fatal(err)
	}
	r := netlab.Rack(t)
	k := startKilnRack(t, r, "managed", 0)
	agent := k.startAgent("agent-nobody", []string{"setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
		"--inh-caps", "-all,+net_bind_service,+net_raw", "--ambient-caps", "-all,+net_bind_service,+net_raw",
		"--bounding-set", "-all,+net_bind_service,+net_raw"})
	agent.Expect(`leading the rack`, 60*time.Second)
	l := netlab.Dhclient(r.Cli, r.Iface, netlab.ClientOpts{MAC: "52:54:00:00:00:11", NoAssign: true}).Lease()
	if l.IP != addr("10.42.0.11") {
		t.Fatalf("got %s from the unprivileged agent", l.IP)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", agent.Pid()))
	if err == nil && !strings.Contains(string(status), "Uid:\t65534") {
		t.Logf("note: pid %d is the setpriv wrapper's child? status:\n%s", agent.Pid(), status)
	}
}

// A rolling upgrade of a rack's agents as docs/install.md describes it:
// each agent in turn is stopped (SIGTERM, as systemctl restart does) and
// started again, the leader last; at every step a client keeps its
// address and a new client is served, and no lease is lost.
func TestRackRollingUpgrade(t *testing.T) {
	netlab.Require(t)
	r := netlab.Rack(t)
	k := startKilnRack(t, r, "managed", 2)
	p, err := netlab.NewProbe(r.Cli, r.Iface, netlab.ProbeOpts{MAC: "52:54:00:00:00:12", Wait: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	_, ack, _, err := p.DORA()
	if err != nil || ack == nil {
		t.Fatalf("client: %v", err)
	}
	held := ack.YIAddr
	k.waitCLI("the lease to be stored", func(s string) bool { return strings.Contains(s, held.String()) }, "get", "leases")

	leader, others := k.leader()
	standby := others[0]
	standby.Expect(`rack view loaded`, 60*time.Second)
	clients := 0
	renewed := func(when string) {
		t.Helper()
		clients++
		kilntest.Eventually(t, 30*time.Second, "the renewal "+when, func() bool {
			rep, _, _ := p.InitReboot(held)
			return rep != nil && rep.Type() == netlab.Ack && rep.YIAddr == held
		})
		if fresh := dora(t, r, "roll"+fmt.Sprint(clients), fmt.Sprintf("02:dd:00:00:00:%02d", clients)); fresh == held {
			t.Fatalf("a new client got %s, which the first one holds", held)
		}
	}
	// The standby first: stopped, and started again upgraded.
	if err := standby.Stop(); err != nil {
		t.Logf("stop %s: %v", standby.Name, err)
	}
	up1 := k.startAgent("upgraded-1", nil)
	up1.Expect(`rack view loaded`, 60*time.Second)
	renewed("with the standby upgraded")
	// Then the leader: the upgraded standby takes over at once (the old
	// leader resigns), and the old leader comes back upgraded as standby.
	if err := leader.Stop(); err != nil {
		t.Logf("stop %s: %v", leader.Name, err)
	}
	up1.Expect(`leading the rack`, 30*time.Second)
	renewed("after the leader stopped")
	k.startAgent("upgraded-2", nil).Expect(`rack view loaded`, 60*time.Second)
	renewed("with both agents upgraded")
	leases := k.kiln("get", "leases")
	if !strings.Contains(leases, held.String()) {
		t.Errorf("the first client's lease is gone:\n%s", leases)
	}
}
