package dhcp

import (
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// BenchmarkDORA is a full DISCOVER/OFFER/REQUEST/ACK of a new MAC through
// decoding, Handle (with the group commit to an in-memory store) and
// encoding, from parallel goroutines as the transport runs them.
func BenchmarkDORA(b *testing.B) {
	cfg := testConfig()
	cfg.Subnets[0].Prefix = pfx("10.0.0.0/8")
	cfg.Subnets[0].Gateway = ip("10.0.0.1")
	cfg.Subnets[0].Dynamic = &Range{ip("10.1.0.0"), ip("10.63.255.255")}
	cfg.Subnets[0].Reserved = nil
	cfg.Hosts = cfg.Hosts[2:]
	h := newHarness(b, cfg, nil, Options{BatchDelay: 2 * time.Millisecond})
	h.s.events = discard{}
	in := Arrival{Interface: "eth0", Addrs: []netip.Prefix{pfx("10.0.0.5/8")}}
	var n atomic.Uint64
	b.SetParallelism(200) // requests in flight, as the transport has them
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			mac := net.HardwareAddr{2, 0, byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)}
			d, _ := dhcpv4.NewDiscovery(mac)
			req, _ := h.s.decode(d.ToBytes(), false)
			offer, _ := h.s.Handle(h.ctx, req, in)
			if offer == nil {
				b.Fatal("no offer")
			}
			r, _ := dhcpv4.NewRequestFromOffer(offer)
			req, _ = h.s.decode(r.ToBytes(), false)
			ack, _ := h.s.Handle(h.ctx, req, in)
			if ack == nil {
				b.Fatal("no ack")
			}
			_ = ack.ToBytes()
		}
	})
}
