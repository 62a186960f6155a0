//go:build linux

package dhcp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/kilnhq/kiln/spec/kilntest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"
)

// freePort returns a UDP port free on loopback (for the server's port
// and the relay's, which share it as on the wire).
func freePort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// peerSocket binds addr on lo the way a relay agent would.
func peerSocket(t *testing.T, addr string) *net.UDPConn {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); serr == nil {
				serr = unix.BindToDevice(int(fd), "lo")
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	c, err := lc.ListenPacket(context.Background(), "udp4", addr)
	if errors.Is(err, unix.EPERM) {
		t.Skipf("binding to a device needs CAP_NET_RAW on this kernel: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.UDPConn)
}

// exchange sends p to dst and reads one reply.
func exchange(t *testing.T, c *net.UDPConn, p *dhcpv4.DHCPv4, dst string) *dhcpv4.DHCPv4 {
	t.Helper()
	send(t, c, p, dst)
	return receive(t, c)
}

// receive reads one reply.
func receive(t *testing.T, c *net.UDPConn) *dhcpv4.DHCPv4 {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 1500)
	n, _, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("no reply: %v", err)
	}
	r, err := dhcpv4.FromBytes(buf[:n])
	if err != nil {
		t.Fatalf("undecodable reply: %v", err)
	}
	return r
}

type running struct {
	s      *Server
	store  *memStore
	events *recorder
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
}

func runServer(t *testing.T, cfg Config, opts Options, store *memStore) *running {
	t.Helper()
	reg := prometheus.NewRegistry()
	events := &recorder{}
	s, err := New(cfg, nil, store, events, opts, NewMetrics(reg), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{s: s, store: store, events: events, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- s.Run(ctx) }()
	select {
	case <-s.ready:
	case err := <-r.done:
		cancel()
		if errors.Is(err, unix.EPERM) {
			t.Skipf("binding to a device needs CAP_NET_RAW on this kernel: %v", err)
		}
		t.Fatalf("Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("server not ready")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			t.Error("Run did not return")
		}
	})
	return r
}

// A relay agent on 127.0.0.2 relays a DORA to the server bound to lo.
func TestUDPRelayedDORA(t *testing.T) {
	port := freePort(t)
	cfg := Config{Rack: "r1", Subnets: []Subnet{{Name: "loop", Prefix: pfx("127.0.0.0/8"), Mode: ModeRelay,
		Gateway: ip("127.0.0.2"), LeaseTime: time.Hour, Dynamic: &Range{ip("127.0.0.100"), ip("127.0.0.150")}}}}
	relay := peerSocket(t, fmt.Sprintf("127.0.0.2:%d", port))
	r := runServer(t, cfg, Options{Interfaces: []string{"lo"}, Port: port, ProxyPort: -1}, newMemStore())
	server := fmt.Sprintf("127.0.0.1:%d", port)

	disc := discover(macUnknown, append(relayed("127.0.0.2", "lo-port-1"), pxe(7)...)...)
	offer := exchange(t, relay, disc, server)
	if mt(offer) != dhcpv4.MessageTypeOffer || yiaddr(offer) != "127.0.0.100" || offer.ServerIdentifier().String() != "127.0.0.1" {
		t.Fatalf("offer: %v %s from %s", mt(offer), yiaddr(offer), offer.ServerIdentifier())
	}
	if !bytes.Equal(offer.Options.Get(dhcpv4.OptionRelayAgentInformation), disc.Options.Get(dhcpv4.OptionRelayAgentInformation)) {
		t.Errorf("option 82 not echoed")
	}
	if offer.BootFileName != "ipxe.efi" {
		t.Errorf("boot file %q", offer.BootFileName)
	}
	ack := exchange(t, relay, requestFor(offer, relayed("127.0.0.2", "lo-port-1")...), server)
	if mt(ack) != dhcpv4.MessageTypeAck || yiaddr(ack) != "127.0.0.100" {
		t.Fatalf("ack: %v %s", mt(ack), yiaddr(ack))
	}
	if l, ok := r.store.get("127.0.0.100"); !ok || l.MAC != macUnknown {
		t.Errorf("stored %+v", l)
	}
	kilntest.Eventually(t, 10*time.Second, "two responses observed", func() bool {
		n, _ := testutil.GatherAndCount(r.reg, "kiln_dhcp_response_seconds")
		return n == 1 && histogramCount(t, r.reg) == 2
	})
	// Garbage is counted, not answered (the next real request still is).
	relay.WriteToUDPAddrPort([]byte("not dhcp"), netip.MustParseAddrPort(server))
	kilntest.Eventually(t, 10*time.Second, "the malformed packet counted", func() bool {
		return testutil.ToFloat64(r.s.m.packets.WithLabelValues("malformed", "ignored")) == 1
	})
}

func histogramCount(t *testing.T, reg *prometheus.Registry) uint64 {
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "kiln_dhcp_response_seconds" {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	return 0
}

// iPXE's ProxyDHCPREQUEST to the proxy port, answered to its source.
func TestUDPProxyPort(t *testing.T) {
	port, proxyPort := freePort(t), freePort(t)
	cfg := Config{Rack: "r1", Subnets: []Subnet{{Name: "site", Prefix: pfx("127.0.0.0/8"), Mode: ModeProxy}}}
	client := peerSocket(t, "127.0.0.3:0")
	runServer(t, cfg, Options{Interfaces: []string{"lo"}, Port: port, ProxyPort: proxyPort}, newMemStore())
	req := message(dhcpv4.MessageTypeRequest, macUnknown, append(pxe(0), ipxeUserClass, dhcpv4.WithClientIP(net.IP{127, 0, 0, 3}))...)
	ack := exchange(t, client, req, fmt.Sprintf("127.0.0.1:%d", proxyPort))
	want := "http://127.0.0.1:8080/boot/" + macUnknown + "/script.ipxe"
	if mt(ack) != dhcpv4.MessageTypeAck || ack.BootFileName != want || ack.ClassIdentifier() != "PXEClient" {
		t.Fatalf("got %v file %q vendor %q", mt(ack), ack.BootFileName, ack.ClassIdentifier())
	}
}

// A store that says another agent leads stops Run with ErrNotLeader.
func TestUDPNotLeaderStopsRun(t *testing.T) {
	port := freePort(t)
	cfg := Config{Rack: "r1", Subnets: []Subnet{{Name: "loop", Prefix: pfx("127.0.0.0/8"), Mode: ModeRelay,
		Gateway: ip("127.0.0.2"), LeaseTime: time.Hour, Dynamic: &Range{ip("127.0.0.100"), ip("127.0.0.150")}}}}
	relay := peerSocket(t, fmt.Sprintf("127.0.0.2:%d", port))
	store := newMemStore()
	store.setFail(fmt.Errorf("lease key fenced: %w", ErrNotLeader))
	r := runServer(t, cfg, Options{Interfaces: []string{"lo"}, Port: port, ProxyPort: -1}, store)
	server := fmt.Sprintf("127.0.0.1:%d", port)
	offer := exchange(t, relay, discover(macUnknown, relayed("127.0.0.2", "x")...), server)
	relay.WriteToUDPAddrPort(requestFor(offer, relayed("127.0.0.2", "x")...).ToBytes(), netip.MustParseAddrPort(server))
	select {
	case err := <-r.done:
		if !errors.Is(err, ErrNotLeader) {
			t.Fatalf("Run returned %v, want ErrNotLeader", err)
		}
		r.done <- err // for the cleanup
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not stop")
	}
}

func TestRunFailsOnAMissingInterface(t *testing.T) {
	s, err := New(testConfig(), nil, newMemStore(), nil, Options{Interfaces: []string{"kiln-nonexistent0"}, Port: freePort(t)}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Run(ctx); err == nil {
		t.Fatal("Run served a missing interface")
	}
}
