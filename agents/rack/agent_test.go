package rack

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/etcd"
	"github.com/kilnhq/kiln/inventory/etcdtest"
	"github.com/kilnhq/kiln/inventory/etcdtest/invtest"
	"github.com/kilnhq/kiln/netboot/dhcp"
	"github.com/kilnhq/kiln/spec/kilntest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The relay subnet lives on loopback (127.77.0.0/24), so relayed DHCP
// can be exercised without network namespaces and without a packet
// leaving this machine.
const inventoryDoc = `
apiVersion: kiln.dev/v1alpha1
kind: Rack
metadata: {name: r1}
---
apiVersion: kiln.dev/v1alpha1
kind: Subnet
metadata: {name: relayed}
spec:
  cidr: 127.77.0.0/24
  rack: r1
  mode: relay
  gateway: 127.77.0.1
  dynamicRange: {start: 127.77.0.100, end: 127.77.0.199}
---
apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata: {name: m1}
spec:
  interfaces: [{name: eno1, mac: "52:54:00:77:00:01", subnet: relayed, ip: auto}]
  bmc: {driver: manual}
`

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

type agentUnderTest struct {
	agent  *Agent
	reg    *prometheus.Registry
	cli    *clientv3.Client
	port   int
	cancel context.CancelFunc
	done   chan error
}

func startAgent(t *testing.T, cfg etcd.Config, id string) *agentUnderTest {
	t.Helper()
	cli, err := etcd.Connect(cfg)
	if err != nil {
		t.Fatal(err)
	}
	u := &agentUnderTest{reg: prometheus.NewRegistry(), cli: cli, port: freeUDPPort(t), done: make(chan error, 1)}
	u.agent = New(Config{Rack: "r1", ID: id, TTL: 2 * time.Second,
		DHCP: dhcp.Options{Interfaces: []string{"lo"}, Port: u.port, ProxyPort: -1}},
		inventory.NewStore(cli, "", quiet()), u.reg, quiet())
	ctx, cancel := context.WithCancel(context.Background())
	u.cancel = cancel
	go func() { u.done <- u.agent.Run(ctx) }()
	t.Cleanup(func() { u.stop(t) })
	return u
}

func (u *agentUnderTest) stop(t *testing.T) {
	if u.cancel == nil {
		return
	}
	u.cancel()
	u.cancel = nil
	if err := <-u.done; err != nil {
		t.Errorf("agent: %v", err)
	}
	u.cli.Close()
}

func (u *agentUnderTest) leading() bool { return testutil.ToFloat64(u.agent.leaderGauge) == 1 }

func freeUDPPort(t *testing.T) int {
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// relay is a DHCP relay on 127.77.0.1 forwarding to an agent's port.
type relay struct {
	conn *net.UDPConn
	to   *net.UDPAddr
}

func newRelay(t *testing.T, port int) *relay {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1) })
		return serr
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", net.JoinHostPort("127.77.0.1", itoa(port)))
	if err != nil {
		t.Fatalf("relay socket: %v", err)
	}
	t.Cleanup(func() { pc.Close() })
	return &relay{conn: pc.(*net.UDPConn), to: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}}
}

func itoa(n int) string {
	return netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(n)).String()[len("0.0.0.0:"):]
}

// exchange relays one message and returns the server's reply.
func (r *relay) exchange(t *testing.T, m *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
	t.Helper()
	m.GatewayIPAddr = net.IPv4(127, 77, 0, 1)
	m.HopCount = 1
	// Like a real client (and relay), send again each second until a
	// reply comes: a leader that has just taken over may not have bound
	// its DHCP socket when the first packet arrives.
	deadline := time.Now().Add(10 * time.Second)
	buf := make([]byte, 1500)
	for time.Now().Before(deadline) {
		if _, err := r.conn.WriteToUDP(m.ToBytes(), r.to); err != nil {
			t.Fatal(err)
		}
		wait := time.Now().Add(time.Second)
		if wait.After(deadline) {
			wait = deadline
		}
		r.conn.SetReadDeadline(wait)
		for {
			n, _, err := r.conn.ReadFromUDP(buf)
			if err != nil {
				break // resend
			}
			reply, err := dhcpv4.FromBytes(buf[:n])
			if err == nil && reply.TransactionID == m.TransactionID && reply.OpCode == dhcpv4.OpcodeBootReply {
				return reply
			}
		}
	}
	t.Fatalf("no reply through the relay within 10s")
	return nil
}

func dora(t *testing.T, r *relay, mac net.HardwareAddr) netip.Addr {
	t.Helper()
	disc, err := dhcpv4.NewDiscovery(mac)
	if err != nil {
		t.Fatal(err)
	}
	offer := r.exchange(t, disc)
	if offer.MessageType() != dhcpv4.MessageTypeOffer {
		t.Fatalf("got %s, want an OFFER", offer.MessageType())
	}
	req, err := dhcpv4.NewRequestFromOffer(offer)
	if err != nil {
		t.Fatal(err)
	}
	ack := r.exchange(t, req)
	if ack.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("got %s, want an ACK", ack.MessageType())
	}
	a, _ := netip.AddrFromSlice(ack.YourIPAddr.To4())
	return a
}

func TestFailoverKeepsLeasesAndFencesTheOldLeader(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("binding DHCP sockets to an interface needs root (CI runs as root)")
	}
	cli, cfg := etcdtest.Start(t)
	ctx := context.Background()
	store := invtest.Apply(t, cli, invtest.Load(t, inventoryDoc))

	a := startAgent(t, cfg, "agent-a")
	kilntest.Eventually(t, 30*time.Second, "agent a to lead", a.leading)
	b := startAgent(t, cfg, "agent-b")
	kilntest.Eventually(t, 30*time.Second, "agent b's view", func() bool {
		select {
		case <-b.agent.ready:
			return true
		default:
			return false
		}
	})
	if b.leading() {
		t.Fatal("two leaders")
	}

	// The leader answers a relayed request for the known machine and
	// stores its lease; the standby's warm cache sees it.
	m1, _ := net.ParseMAC("52:54:00:77:00:01")
	ip1 := dora(t, newRelay(t, a.port), m1)
	if !netip.MustParsePrefix("127.77.0.0/24").Contains(ip1) {
		t.Fatalf("m1 got %s", ip1)
	}
	kilntest.Eventually(t, 10*time.Second, "the standby to cache m1's lease", func() bool {
		b.agent.mu.Lock()
		defer b.agent.mu.Unlock()
		for _, l := range b.agent.leases {
			if l.MAC == m1.String() && l.IP == ip1 && l.Reserved {
				return true
			}
		}
		return false
	})
	// An unknown MAC is discovered.
	unknown, _ := net.ParseMAC("02:00:00:00:00:99")
	ipU := dora(t, newRelay(t, a.port), unknown)
	if ipU.Compare(netip.MustParseAddr("127.77.0.100")) < 0 {
		t.Fatalf("unknown MAC got %s, want one from the dynamic range", ipU)
	}
	kilntest.Eventually(t, 10*time.Second, "discovery and the boot timeline in etcd", func() bool {
		d, err := inventory.GetJSON[inventory.Discovered](ctx, store, store.Keys().Discovered("r1", unknown.String()))
		tl, err2 := inventory.GetJSON[inventory.Timeline](ctx, store, store.Keys().Timeline("r1", "m1"))
		return err == nil && d.IP == ipU.String() && d.Rack == "r1" && err2 == nil && len(tl.Events) >= 3
	})

	// The leader dies without resigning: its etcd connection just ends.
	aKey, aRev := "", int64(0)
	if resp, err := cli.Get(ctx, store.Keys().RackElection("r1"), clientv3.WithFirstCreate()...); err == nil && len(resp.Kvs) > 0 {
		aKey, aRev = string(resp.Kvs[0].Key), resp.Kvs[0].CreateRevision
	}
	a.cli.Close()
	took := kilntest.Eventually(t, 15*time.Second, "agent b to take over", b.leading)
	t.Logf("standby took over %s after the leader's connection died (session TTL 2s)", took.Round(time.Millisecond))

	// The new leader gives m1 the same address, from its warm cache.
	if ip := dora(t, newRelay(t, b.port), m1); ip != ip1 {
		t.Fatalf("after failover m1 got %s, before %s", ip, ip1)
	}
	// The old leader's fence no longer holds.
	old := &fencedLeases{rack: "r1", store: store, fence: inventory.Fence{Key: aKey, Rev: aRev}}
	err := old.Save(ctx, []dhcp.Lease{{Subnet: "relayed", IP: netip.MustParseAddr("127.77.0.150"), MAC: "02:00:00:00:00:77"}})
	if !errors.Is(err, dhcp.ErrNotLeader) {
		t.Fatalf("a deposed leader's write: got %v, want ErrNotLeader", err)
	}
	a.stop(t)
}
