package dhcp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/kilnhq/kiln/spec/kilntest"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func macN(i int) string { return fmt.Sprintf("02:00:00:00:%02x:%02x", i>>8, i&0xff) }

// Many MACs racing for a small pool: no address is ever acknowledged to
// two of them, and the pool is used to the last address.
func TestConflictFreeAllocation(t *testing.T) {
	cfg := testConfig()
	cfg.Subnets[0].Dynamic = &Range{ip("10.42.0.100"), ip("10.42.0.109")}
	// Known hosts allocated once race for the space outside it too.
	cfg.Subnets[0].Reserved = []Range{{ip("10.42.0.2"), ip("10.42.0.9")}, {ip("10.42.0.16"), ip("10.42.0.99")}, {ip("10.42.0.110"), ip("10.42.0.254")}}
	for i := range 20 {
		cfg.Hosts = append(cfg.Hosts, Host{Machine: fmt.Sprintf("m-%d", i), MAC: mustMAC(macN(1000 + i)), Subnet: "lab"})
	}
	h := newHarness(t, cfg, nil, Options{BatchDelay: time.Millisecond})
	var mu sync.Mutex
	owner := map[string]string{} // ip → mac
	var wg sync.WaitGroup
	for i := range 60 {
		mac := macN(i)
		if i >= 40 {
			mac = macN(1000 + i - 40) // the known hosts
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 5 {
				_, ack := h.dora(mac, onLab)
				if mt(ack) != dhcpv4.MessageTypeAck {
					continue
				}
				mu.Lock()
				if o, ok := owner[yiaddr(ack)]; ok && o != mac {
					t.Errorf("%s acknowledged to %s and %s", yiaddr(ack), o, mac)
				}
				owner[yiaddr(ack)] = mac
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	dynamic, known := 0, 0
	for a := range owner {
		switch x := toIP4(ip(a)); {
		case x >= toIP4(ip("10.42.0.100")) && x <= toIP4(ip("10.42.0.109")):
			dynamic++
		case x == toIP4(ip("10.42.0.10")) || x >= toIP4(ip("10.42.0.12")) && x <= toIP4(ip("10.42.0.15")):
			known++
		default:
			t.Errorf("%s handed out", a)
		}
	}
	// 10 dynamic addresses for 40 unknown MACs; 5 allocatable for 20 machines.
	if dynamic != 10 || known != 5 {
		t.Errorf("%d dynamic and %d allocated addresses used, want 10 and 5", dynamic, known)
	}
	seen := map[string]string{}
	for _, l := range h.store.all() {
		if o, ok := seen[l.IP.String()]; ok && o != l.MAC {
			t.Errorf("store: %s for %s and %s", l.IP, o, l.MAC)
		}
		seen[l.IP.String()] = l.MAC
	}
}

// Concurrent ACKs are stored with one Save per batch.
func TestGroupCommit(t *testing.T) {
	h := newHarness(t, testConfig(), nil, Options{BatchDelay: time.Millisecond})
	const n = 60
	offers := make([]*dhcpv4.DHCPv4, n)
	for i := range n {
		offers[i], _ = h.handle(discover(macN(i)), onLab)
		if offers[i] == nil {
			t.Fatal("no offer")
		}
	}
	// Hold the first Save until everything else is queued behind it.
	gate, entered := make(chan struct{}), make(chan struct{}, n)
	h.store.mu.Lock()
	h.store.gate, h.store.entered = gate, entered
	h.store.mu.Unlock()
	acks := make(chan *dhcpv4.DHCPv4, n)
	first := make(chan struct{})
	go func() {
		r, _ := h.handle(requestFor(offers[0]), onLab)
		acks <- r
		close(first)
	}()
	<-entered
	var wg sync.WaitGroup
	for i := 1; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, _ := h.handle(requestFor(offers[i]), onLab)
			acks <- r
		}()
	}
	kilntest.Eventually(t, 10*time.Second, "59 leases queued", func() bool { return len(h.s.commit.in) == n-1 })
	select {
	case <-first:
		t.Fatal("an ACK was sent before its lease was stored")
	default:
	}
	close(gate)
	wg.Wait()
	<-first
	close(acks)
	got := 0
	for r := range acks {
		if mt(r) == dhcpv4.MessageTypeAck {
			got++
		}
	}
	if got != n {
		t.Errorf("%d ACKs, want %d", got, n)
	}
	if s := h.store.saves(); s != 2 {
		t.Errorf("%d saves for %d concurrent ACKs, want 2 (1 + one batch)", s, n)
	}
	if err := testutil.GatherAndCompare(h.reg, strings.NewReader(`
# HELP kiln_dhcp_lease_save_batch_size Leases per batched save.
# TYPE kiln_dhcp_lease_save_batch_size histogram
kiln_dhcp_lease_save_batch_size_bucket{le="1"} 1
kiln_dhcp_lease_save_batch_size_bucket{le="2"} 1
kiln_dhcp_lease_save_batch_size_bucket{le="5"} 1
kiln_dhcp_lease_save_batch_size_bucket{le="10"} 1
kiln_dhcp_lease_save_batch_size_bucket{le="20"} 1
kiln_dhcp_lease_save_batch_size_bucket{le="50"} 1
kiln_dhcp_lease_save_batch_size_bucket{le="100"} 2
kiln_dhcp_lease_save_batch_size_bucket{le="200"} 2
kiln_dhcp_lease_save_batch_size_bucket{le="+Inf"} 2
kiln_dhcp_lease_save_batch_size_sum 60
kiln_dhcp_lease_save_batch_size_count 2
`), "kiln_dhcp_lease_save_batch_size"); err != nil {
		t.Error(err)
	}
}

// While the store fails: stored reservations, static IPs and stored
// leases (for their remaining time) are acknowledged; new allocations
// are not answered until the store is back.
func TestSaveFailure(t *testing.T) {
	now := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	known := []Lease{
		{Subnet: "lab", IP: ip("10.42.0.10"), MAC: macVM2, Machine: "vm-2", Hostname: "vm-2", Reserved: true, Expires: now.Add(-time.Hour), Updated: now.Add(-2 * time.Hour)},
		{Subnet: "lab", IP: ip("10.42.0.150"), MAC: "52:54:00:99:00:50", Expires: now.Add(20 * time.Minute), Updated: now.Add(-40 * time.Minute)},
		{Subnet: "lab", IP: ip("10.42.0.151"), MAC: "52:54:00:99:00:51", Expires: now.Add(5 * time.Second), Updated: now.Add(-time.Hour)},
	}
	h := newHarness(t, testConfig(), known, Options{})
	h.store.setFail(errDown)
	renew := func(mac, a string) *dhcpv4.DHCPv4 {
		return message(dhcpv4.MessageTypeRequest, mac, dhcpv4.WithClientIP(net.ParseIP(a)))
	}
	cases := []struct {
		name  string
		mac   string
		req   *dhcpv4.DHCPv4 // nil: a DORA
		want  string         // "" for no answer
		lease time.Duration
	}{
		{"new unknown MAC", macUnknown, nil, "", 0},
		{"machine to allocate", "52:54:00:42:00:77", nil, "", 0},
		{"stored reservation", macVM2, nil, "10.42.0.10", time.Hour},
		{"static IP", macVM1, nil, "10.42.0.11", time.Hour},
		{"stored lease renewed", "52:54:00:99:00:50", renew("52:54:00:99:00:50", "10.42.0.150"), "10.42.0.150", 20 * time.Minute},
		{"stored lease nearly over", "52:54:00:99:00:51", renew("52:54:00:99:00:51", "10.42.0.151"), "", 0},
	}
	cfg := testConfig()
	cfg.Hosts = append(cfg.Hosts, Host{Machine: "vm-77", MAC: mustMAC("52:54:00:42:00:77"), Subnet: "lab"})
	h.s.Update(cfg)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var r *dhcpv4.DHCPv4
			if c.req == nil {
				_, r = h.dora(c.mac, onLab)
			} else {
				r, _ = h.handle(c.req, onLab)
			}
			if c.want == "" {
				if r != nil {
					t.Fatalf("answered %v %s while the store fails", mt(r), yiaddr(r))
				}
				return
			}
			if mt(r) != dhcpv4.MessageTypeAck || yiaddr(r) != c.want || r.IPAddressLeaseTime(0) != c.lease {
				t.Fatalf("got %v %s for %s, want ACK %s for %s", mt(r), yiaddr(r), r.IPAddressLeaseTime(0), c.want, c.lease)
			}
		})
	}
	if got := testutil.ToFloat64(h.s.m.packets.WithLabelValues("request", "error")); got != 3 {
		t.Errorf("request errors = %v, want 3", got)
	}
	// The store is back: the client's retry is acknowledged, with the
	// address it was offered.
	h.store.setFail(nil)
	offer, ack := h.dora(macUnknown, onLab)
	if mt(ack) != dhcpv4.MessageTypeAck || yiaddr(ack) != yiaddr(offer) {
		t.Fatalf("after recovery: %v %s", mt(ack), yiaddr(ack))
	}
	if l, ok := h.store.get(yiaddr(ack)); !ok || l.MAC != macUnknown {
		t.Errorf("stored %+v", l)
	}
}

func TestNotLeaderStopsTheCommitter(t *testing.T) {
	h := newHarness(t, testConfig(), nil, Options{})
	h.store.setFail(fmt.Errorf("fenced: %w", ErrNotLeader))
	if _, ack := h.dora(macUnknown, onLab); ack != nil {
		t.Fatal("ACK without a store")
	}
	select {
	case err := <-h.s.commit.fatal:
		if !errors.Is(err, ErrNotLeader) {
			t.Errorf("fatal %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no fatal error")
	}
	if err := h.s.commit.save(h.ctx, Lease{}); !errors.Is(err, errStopped) && !errors.Is(err, ErrNotLeader) {
		t.Errorf("save after the end: %v", err)
	}
}

// Update while serving: hosts come and go under load, requests see one
// config or the other, never a mix that breaks them.
func TestUpdateWhileServing(t *testing.T) {
	h := newHarness(t, testConfig(), nil, Options{BatchDelay: time.Millisecond})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				mac := macN(w*1000 + i%50)
				if _, ack := h.dora(mac, onLab); ack != nil && ack.YourIPAddr.To4()[3] < 100 && yiaddr(ack) != "10.42.0.11" {
					// allocated-once address: only for the machine that came and went
					if ack.HostName() != "new" {
						t.Errorf("%s got %s (%q)", mac, yiaddr(ack), ack.HostName())
					}
				}
			}
		}()
	}
	base := testConfig()
	with := testConfig()
	with.Hosts = append(with.Hosts, Host{Machine: "new", MAC: mustMAC(macN(7)), Subnet: "lab"})
	with.Subnets[0].Gateway = ip("10.42.0.254")
	for i := range 200 {
		if i%2 == 0 {
			h.s.Update(with)
		} else {
			h.s.Update(base)
		}
	}
	h.s.Update(with)
	close(stop)
	wg.Wait()
	offer, _ := h.handle(discover(macVM1), onLab)
	if offer == nil || offer.Router()[0].String() != "10.42.0.254" {
		t.Errorf("the last config is not served: %v", offer)
	}
	// A new static host is served at once.
	cfg := testConfig()
	cfg.Hosts = append(cfg.Hosts, Host{Machine: "vm-9", MAC: mustMAC("52:54:00:42:00:09"), Subnet: "lab", IP: ip("10.42.0.99")})
	h.s.Update(cfg)
	if _, ack := h.dora("52:54:00:42:00:09", onLab); yiaddr(ack) != "10.42.0.99" {
		t.Errorf("new host got %s", yiaddr(ack))
	}
}

// A static IP moved to another machine: the old holder keeps it until its
// lease time ends, then the new one gets it; never both.
func TestStaticIPMoved(t *testing.T) {
	h := newHarness(t, testConfig(), nil, Options{})
	if _, ack := h.dora(macVM1, onLab); yiaddr(ack) != "10.42.0.11" {
		t.Fatal("vm-1")
	}
	cfg := testConfig()
	cfg.Hosts[0].IP = ip("10.42.0.12")                                                                                           // vm-1 moves
	cfg.Hosts = append(cfg.Hosts, Host{Machine: "vm-5", MAC: mustMAC("52:54:00:42:00:05"), Subnet: "lab", IP: ip("10.42.0.11")}) // takes its old address
	h.s.Update(cfg)
	if r, _ := h.handle(discover("52:54:00:42:00:05"), onLab); r != nil {
		t.Fatalf("vm-5 offered %s while vm-1's lease runs", yiaddr(r))
	}
	renew := message(dhcpv4.MessageTypeRequest, macVM1, dhcpv4.WithClientIP(net.IP{10, 42, 0, 11}))
	if r, _ := h.handle(renew, onLab); mt(r) != dhcpv4.MessageTypeNak {
		t.Fatalf("vm-1 renewing its old address: %v", mt(r))
	}
	if _, ack := h.dora(macVM1, onLab); yiaddr(ack) != "10.42.0.12" {
		t.Fatalf("vm-1 got %s", yiaddr(ack))
	}
	kilntest.Eventually(t, 10*time.Second, "vm-1's old lease ended", func() bool { l, _ := h.store.get("10.42.0.11"); return l.Ended() })
	if _, ack := h.dora("52:54:00:42:00:05", onLab); yiaddr(ack) != "10.42.0.11" {
		t.Fatalf("vm-5 got %s", yiaddr(ack))
	}
}

func TestMetrics(t *testing.T) {
	h := newHarness(t, testConfig(), nil, Options{})
	h.dora(macVM1, onLab)
	h.dora(macUnknown, onLab)
	h.handle(discover(macUnknown), onOther)
	h.handle(message(dhcpv4.MessageTypeRequest, macVM1, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IP{10, 42, 0, 12}))), onLab)
	h.s.Handle(h.ctx, &dhcpv4.DHCPv4{OpCode: dhcpv4.OpcodeBootReply}, onLab)
	err := testutil.GatherAndCompare(h.reg, strings.NewReader(`
# HELP kiln_dhcp_leases Active leases (reservations and unexpired dynamic leases) by subnet.
# TYPE kiln_dhcp_leases gauge
kiln_dhcp_leases{subnet="lab"} 2
kiln_dhcp_leases{subnet="remote"} 0
kiln_dhcp_leases{subnet="site"} 0
# HELP kiln_dhcp_pool_free Free addresses of the subnet's dynamic range.
# TYPE kiln_dhcp_pool_free gauge
kiln_dhcp_pool_free{subnet="lab"} 99
kiln_dhcp_pool_free{subnet="remote"} 51
kiln_dhcp_pool_free{subnet="site"} 0
# HELP kiln_dhcp_packets_total DHCP requests by type (discover, request, release, decline, inform, other, malformed) and result (offered, acked, naked, ignored, error, handled).
# TYPE kiln_dhcp_packets_total counter
kiln_dhcp_packets_total{result="acked",type="inform"} 0
kiln_dhcp_packets_total{result="acked",type="request"} 2
kiln_dhcp_packets_total{result="error",type="discover"} 0
kiln_dhcp_packets_total{result="error",type="request"} 0
kiln_dhcp_packets_total{result="handled",type="decline"} 0
kiln_dhcp_packets_total{result="handled",type="release"} 0
kiln_dhcp_packets_total{result="ignored",type="decline"} 0
kiln_dhcp_packets_total{result="ignored",type="discover"} 1
kiln_dhcp_packets_total{result="ignored",type="inform"} 0
kiln_dhcp_packets_total{result="ignored",type="malformed"} 1
kiln_dhcp_packets_total{result="ignored",type="other"} 0
kiln_dhcp_packets_total{result="ignored",type="release"} 0
kiln_dhcp_packets_total{result="ignored",type="request"} 0
kiln_dhcp_packets_total{result="naked",type="request"} 1
kiln_dhcp_packets_total{result="offered",type="discover"} 2
`), "kiln_dhcp_leases", "kiln_dhcp_pool_free", "kiln_dhcp_packets_total")
	if err != nil {
		t.Error(err)
	}
}

// This host's own addresses are never handed out: not allocated once,
// not from the dynamic range, not even as a static IP.
func TestOwnAddressesNeverHandedOut(t *testing.T) {
	cfg := testConfig()
	cfg.Subnets[0].Dynamic = &Range{ip("10.42.0.100"), ip("10.42.0.101")}
	cfg.Hosts = append(cfg.Hosts, Host{Machine: "clash", MAC: mustMAC("52:54:00:42:00:66"), Subnet: "lab", IP: ip("10.42.0.5")})
	h := newHarness(t, cfg, nil, Options{})
	h.s.setLocalAddrs([]netip.Addr{ip("10.42.0.5"), ip("10.42.0.10"), ip("10.42.0.100")})
	if _, ack := h.dora(macVM2, onLab); yiaddr(ack) != "10.42.0.12" {
		t.Errorf("vm-2 got %s, want 10.42.0.12 (.10 is ours)", yiaddr(ack))
	}
	if _, ack := h.dora(macUnknown, onLab); yiaddr(ack) != "10.42.0.101" {
		t.Errorf("unknown got %s, want 10.42.0.101 (.100 is ours)", yiaddr(ack))
	}
	if r, _ := h.handle(discover("52:54:00:42:00:66"), onLab); r != nil {
		t.Errorf("our own address offered as a static IP: %s", yiaddr(r))
	}
	if got := testutil.ToFloat64(h.s.m.packets.WithLabelValues("discover", "offered")); got != 2 {
		t.Errorf("offers %v", got)
	}
}
