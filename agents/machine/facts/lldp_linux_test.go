package facts

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/kilnhq/kiln/agents/machine/internal/netnstest"
	"github.com/kilnhq/kiln/spec/agentapi"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestLLDPListener sends an LLDP frame on one end of a veth pair in a
// network namespace of its own and expects the collector, listening on
// the other end, to report it.
func TestLLDPListener(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "sw0"}, PeerName: "host0"}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	for _, n := range []string{"sw0", "host0"} {
		l, err := netlink.LinkByName(n)
		if err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	type res struct {
		f   agentapi.Facts
		err error
	}
	done := make(chan res, 1)
	go func() {
		var f agentapi.Facts
		err := LLDPCollector{Wait: 15 * time.Second, Interfaces: []string{"host0"}, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}.Collect(ctx, &f)
		done <- res{f, err}
	}()

	// The switch side: send until the listener has its neighbour (it may
	// not be listening yet when the first frame goes out).
	sw, err := net.InterfaceByName("sw0")
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(EtherTypeLLDP)))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	to := &unix.SockaddrLinklayer{Protocol: htons(EtherTypeLLDP), Ifindex: sw.Index, Halen: 6}
	copy(to.Addr[:], lldpMulticast)
	pdu := buildLLDP(sw.HardwareAddr, "Ethernet7", 120, tlv(nil, tlvSystemName, []byte("leaf-1")))
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := unix.Sendto(fd, []byte("not lldp"), 0, to); err != nil { // ignored by the parser
			t.Fatal(err)
		}
		if err := unix.Sendto(fd, pdu, 0, to); err != nil {
			t.Fatalf("send LLDP: %v", err)
		}
		select {
		case r := <-done:
			if r.err != nil {
				t.Fatal(r.err)
			}
			host, _ := net.InterfaceByName("host0")
			want := agentapi.Neighbor{Interface: "host0", MAC: host.HardwareAddr.String(), ChassisID: sw.HardwareAddr.String(), ChassisIDType: "mac",
				PortID: "Ethernet7", PortIDType: "interface-name", SystemName: "leaf-1", TTLSeconds: 120}
			if len(r.f.LLDP) != 1 || r.f.LLDP[0] != want {
				t.Fatalf("lldp = %+v, want [%+v]", r.f.LLDP, want)
			}
			return
		case <-tick.C:
		case <-ctx.Done():
			t.Fatal("no LLDP neighbour reported")
		}
	}
}

// TestLLDPCollectorNoInterface reports the failure when no interface can
// be listened on.
func TestLLDPCollectorNoInterface(t *testing.T) {
	t.Parallel()
	var f agentapi.Facts
	err := LLDPCollector{Wait: time.Millisecond, Interfaces: []string{"no-such-if0"}}.Collect(context.Background(), &f)
	if err == nil {
		t.Fatal("want an error for a missing interface")
	}
}
