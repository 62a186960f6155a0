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
	vethPair(t)
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
	send, sw := switchSide(t)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		send()
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

// vethPair makes and sets up the veth pair sw0 (the switch's end) and
// host0 (the machine's).
func vethPair(t *testing.T) {
	t.Helper()
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
}

// switchSide returns a function that sends, on sw0, a frame that is not
// LLDP (ignored by the parser) and an LLDP frame of switch leaf-1, port
// Ethernet7; and sw0 itself.
func switchSide(t *testing.T) (func(), *net.Interface) {
	t.Helper()
	sw, err := net.InterfaceByName("sw0")
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(EtherTypeLLDP)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	to := &unix.SockaddrLinklayer{Protocol: htons(EtherTypeLLDP), Ifindex: sw.Index, Halen: 6}
	copy(to.Addr[:], lldpMulticast)
	pdu := buildLLDP(sw.HardwareAddr, "Ethernet7", 120, tlv(nil, tlvSystemName, []byte("leaf-1")))
	return func() {
		if err := unix.Sendto(fd, []byte("not lldp"), 0, to); err != nil {
			t.Fatal(err)
		}
		if err := unix.Sendto(fd, pdu, 0, to); err != nil {
			t.Fatalf("send LLDP: %v", err)
		}
	}, sw
}

// TestLLDPWatchHearsFramesBeforeCollect: a watch started at the agent's
// start hears a frame sent long before the facts are collected (as a
// switch's 30-s frame would be), and the collector then returns at once;
// the switch sends nothing more.
func TestLLDPWatchHearsFramesBeforeCollect(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	vethPair(t)
	w := WatchLLDP(context.Background(), time.Hour, slog.New(slog.DiscardHandler))
	defer w.Stop()
	if err := w.ListenUp(); err != nil {
		t.Fatal(err)
	}
	send, sw := switchSide(t)
	w.mu.Lock()
	heard := w.ifaces["host0"]
	w.mu.Unlock()
	if heard == nil {
		t.Fatal("ListenUp does not listen on host0")
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for sent := false; !sent; {
		send()
		select {
		case <-heard.done:
			sent = true
		case <-tick.C:
		case <-ctx.Done():
			t.Fatal("the watch heard nothing")
		}
	}
	// The facts, later: no more frames, and the collector does not wait
	// for the hour-long deadline (ctx would end it with an error first).
	f := agentapi.Facts{NICs: []agentapi.NIC{{Name: "host0", OperState: "up", Carrier: true}}}
	if err := (LLDPCollector{Watch: w}).Collect(ctx, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.LLDP) != 1 || f.LLDP[0].Interface != "host0" || f.LLDP[0].ChassisID != sw.HardwareAddr.String() || f.LLDP[0].PortID != "Ethernet7" {
		t.Fatalf("lldp %+v", f.LLDP)
	}
}

// TestLLDPWatchBoundOnRealSocket: no switch sends; the collector returns
// at the watch's deadline with no neighbour and no error.
func TestLLDPWatchBoundOnRealSocket(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	vethPair(t)
	const bound = 500 * time.Millisecond
	start := time.Now()
	w := WatchLLDP(context.Background(), bound, nil)
	defer w.Stop()
	f := agentapi.Facts{NICs: []agentapi.NIC{{Name: "host0", OperState: "up", Carrier: true}}}
	if err := (LLDPCollector{Watch: w}).Collect(context.Background(), &f); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); len(f.LLDP) != 0 || took < bound || took > bound+5*time.Second {
		t.Fatalf("lldp %+v after %s, want none after %s", f.LLDP, took, bound)
	}
}
