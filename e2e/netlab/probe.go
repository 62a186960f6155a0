package netlab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"
)

// DHCP message types (option 53).
const (
	Discover byte = 1
	Offer    byte = 2
	Request  byte = 3
	Decline  byte = 4
	Ack      byte = 5
	Nak      byte = 6
	Release  byte = 7
	Inform   byte = 8
)

var typeNames = map[byte]string{1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 4: "DECLINE", 5: "ACK", 6: "NAK", 7: "RELEASE", 8: "INFORM"}

// DHCP option codes used here.
const (
	OptSubnetMask  byte = 1
	OptRouter      byte = 3
	OptDNS         byte = 6
	OptHostname    byte = 12
	OptDomain      byte = 15
	OptMTU         byte = 26
	OptVendorOpts  byte = 43
	OptRequestedIP byte = 50
	OptLeaseTime   byte = 51
	OptMsgType     byte = 53
	OptServerID    byte = 54
	OptParams      byte = 55
	OptVendorClass byte = 60
	OptClientID    byte = 61
	OptTFTPServer  byte = 66
	OptBootfile    byte = 67
	OptUserClass   byte = 77
	OptRelayAgent  byte = 82
	OptClientArch  byte = 93
	OptClientNDI   byte = 94
	OptUUID        byte = 97
)

// Packet is a DHCPv4 message: an independent, minimal codec for checking
// servers byte by byte.
type Packet struct {
	Op                             byte // 1 request, 2 reply
	Hops                           byte
	XID                            uint32
	Secs                           uint16
	Flags                          uint16 // 0x8000: broadcast
	CIAddr, YIAddr, SIAddr, GIAddr netip.Addr
	CHAddr                         net.HardwareAddr
	SName, File                    string
	Options                        map[byte][]byte
}

var magic = []byte{99, 130, 83, 99}

// Marshal encodes the packet (options in code order, padded to 300 bytes).
func (p *Packet) Marshal() []byte {
	b := make([]byte, 240, 576)
	b[0], b[1], b[2], b[3] = p.Op, 1, 6, p.Hops
	binary.BigEndian.PutUint32(b[4:], p.XID)
	binary.BigEndian.PutUint16(b[8:], p.Secs)
	binary.BigEndian.PutUint16(b[10:], p.Flags)
	for i, a := range []netip.Addr{p.CIAddr, p.YIAddr, p.SIAddr, p.GIAddr} {
		if a.Is4() {
			v := a.As4()
			copy(b[12+4*i:], v[:])
		}
	}
	copy(b[28:44], p.CHAddr)
	copy(b[44:108], p.SName)
	copy(b[108:236], p.File)
	copy(b[236:240], magic)
	codes := make([]int, 0, len(p.Options))
	for c := range p.Options {
		codes = append(codes, int(c))
	}
	sort.Ints(codes)
	if i := slices.Index(codes, int(OptMsgType)); i > 0 { // message type first
		codes = append([]int{int(OptMsgType)}, slices.Delete(codes, i, i+1)...)
	}
	for _, c := range codes {
		v := p.Options[byte(c)]
		for len(v) > 255 {
			b = append(b, byte(c), 255)
			b = append(b, v[:255]...)
			v = v[255:]
		}
		b = append(b, byte(c), byte(len(v)))
		b = append(b, v...)
	}
	b = append(b, 255)
	for len(b) < 300 {
		b = append(b, 0)
	}
	return b
}

// ParsePacket decodes a DHCPv4 message (repeated options are concatenated,
// RFC 3396; overloaded sname/file are not decoded as options).
func ParsePacket(b []byte) (*Packet, error) {
	if len(b) < 240 || !slices.Equal(b[236:240], magic) {
		return nil, errors.New("not a DHCP message")
	}
	p := &Packet{Op: b[0], Hops: b[3], XID: binary.BigEndian.Uint32(b[4:]),
		Secs: binary.BigEndian.Uint16(b[8:]), Flags: binary.BigEndian.Uint16(b[10:]),
		Options: map[byte][]byte{}}
	addr := func(o int) netip.Addr { return netip.AddrFrom4([4]byte(b[o : o+4])) }
	p.CIAddr, p.YIAddr, p.SIAddr, p.GIAddr = addr(12), addr(16), addr(20), addr(24)
	hlen := min(int(b[2]), 16)
	p.CHAddr = slices.Clone(net.HardwareAddr(b[28 : 28+hlen]))
	p.SName = cstring(b[44:108])
	p.File = cstring(b[108:236])
	for i := 240; i < len(b); {
		c := b[i]
		if c == 0 {
			i++
			continue
		}
		if c == 255 {
			break
		}
		if i+1 >= len(b) || i+2+int(b[i+1]) > len(b) {
			return p, fmt.Errorf("option %d truncated", c)
		}
		n := int(b[i+1])
		p.Options[c] = append(p.Options[c], b[i+2:i+2+n]...)
		i += 2 + n
	}
	return p, nil
}

func cstring(b []byte) string {
	if i := slices.Index(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// Type returns the message type (option 53), 0 for BOOTP.
func (p *Packet) Type() byte {
	if v := p.Options[OptMsgType]; len(v) == 1 {
		return v[0]
	}
	return 0
}

// TypeName returns the message type's name.
func (p *Packet) TypeName() string {
	if n, ok := typeNames[p.Type()]; ok {
		return n
	}
	return fmt.Sprintf("type-%d", p.Type())
}

// Text returns an option as text.
func (p *Packet) Text(code byte) string { return strings.TrimRight(string(p.Options[code]), "\x00") }

// Addr returns an option holding one IPv4 address.
func (p *Packet) Addr(code byte) netip.Addr {
	if v := p.Options[code]; len(v) >= 4 {
		return netip.AddrFrom4([4]byte(v[:4]))
	}
	return netip.Addr{}
}

// Addrs returns an option holding IPv4 addresses.
func (p *Packet) Addrs(code byte) []netip.Addr {
	v := p.Options[code]
	var as []netip.Addr
	for i := 0; i+4 <= len(v); i += 4 {
		as = append(as, netip.AddrFrom4([4]byte(v[i:i+4])))
	}
	return as
}

// Uint returns a 1-, 2- or 4-byte unsigned option.
func (p *Packet) Uint(code byte) (uint32, bool) {
	v := p.Options[code]
	switch len(v) {
	case 1:
		return uint32(v[0]), true
	case 2:
		return uint32(binary.BigEndian.Uint16(v)), true
	case 4:
		return binary.BigEndian.Uint32(v), true
	}
	return 0, false
}

// BootFile returns the boot file: the file field, or option 67 when the
// field is empty (servers put it there when the client asks for 67).
func (p *Packet) BootFile() string {
	if p.File != "" {
		return p.File
	}
	return p.Text(OptBootfile)
}

// Summary is a one-line description for logs.
func (p *Packet) Summary() string {
	a := func(x netip.Addr) netip.Addr {
		if !x.IsValid() {
			return netip.IPv4Unspecified()
		}
		return x
	}
	s := fmt.Sprintf("%s xid=%08x chaddr=%s ciaddr=%s yiaddr=%s siaddr=%s giaddr=%s", p.TypeName(), p.XID, p.CHAddr, a(p.CIAddr), a(p.YIAddr), a(p.SIAddr), a(p.GIAddr))
	if id := p.Addr(OptServerID); id.IsValid() {
		s += " server-id=" + id.String()
	}
	if f := p.BootFile(); f != "" {
		s += fmt.Sprintf(" file=%q", f)
	}
	if v := p.Text(OptVendorClass); v != "" {
		s += fmt.Sprintf(" vendor-class=%q", v)
	}
	return s
}

// ProbeOpts describes the client a Probe pretends to be.
type ProbeOpts struct {
	MAC         string // chaddr and client id; default: the interface's MAC
	Hostname    string
	VendorClass string
	UserClass   string  // sent as the bare string, as iPXE does
	ClientArch  *uint16 // option 93
	Options     map[byte][]byte
	// Wait is how long to collect replies after each message (default
	// 2 s): long enough for every server on the segment to answer.
	Wait time.Duration
}

// Reply is a message a Probe received.
type Reply struct {
	*Packet
	From  netip.AddrPort
	After time.Duration // since the message it answers was sent
}

// Probe is a DHCP client in Go, for seeing every server's answer (a
// proxyDHCP offer beside a normal one, two racks' agents) rather than the
// one a real client picks. It sends and receives raw IPv4 on one
// interface through a packet socket, like a PXE ROM: requests go from
// 0.0.0.0:68 to 255.255.255.255:67 whatever addresses the namespace has,
// with the broadcast flag set, and every reply to port 68 on the
// interface is seen, broadcast or unicast.
type Probe struct {
	NS    *NS
	Iface string
	Opts  ProbeOpts
	mac   net.HardwareAddr
	file  *os.File // the packet socket, non-blocking, for read deadlines
	raw   syscall.RawConn
	ifidx int
}

// NewProbe opens a probe's socket on the interface of the namespace.
func NewProbe(n *NS, iface string, o ProbeOpts) (*Probe, error) {
	p := &Probe{NS: n, Iface: iface, Opts: o}
	if p.Opts.Wait == 0 {
		p.Opts.Wait = 2 * time.Second
	}
	err := n.Do(func() error {
		ifc, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		p.ifidx = ifc.Index
		if o.MAC == "" {
			p.mac = ifc.HardwareAddr
		} else if p.mac, err = net.ParseMAC(o.MAC); err != nil {
			return err
		}
		fd, err := syscall.Socket(syscall.AF_PACKET, syscall.SOCK_DGRAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, int(htons(syscall.ETH_P_IP)))
		if err != nil {
			return err
		}
		if err := syscall.Bind(fd, &syscall.SockaddrLinklayer{Protocol: htons(syscall.ETH_P_IP), Ifindex: ifc.Index}); err != nil {
			syscall.Close(fd)
			return err
		}
		p.file = os.NewFile(uintptr(fd), "probe-"+iface)
		p.raw, err = p.file.SyscallConn()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("probe on %s in %s: %w", iface, n.Short, err)
	}
	return p, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// Close closes the probe's socket.
func (p *Probe) Close() error { return p.file.Close() }

// MAC returns the hardware address the probe uses.
func (p *Probe) MAC() net.HardwareAddr { return p.mac }

var bcast = netip.AddrPortFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), 67)

// send sends a DHCP message from src:68 to dst in an Ethernet broadcast
// (no ARP needed; Linux accepts unicast IP in L2 broadcast).
func (p *Probe) send(m *Packet, src netip.Addr, dst netip.AddrPort) error {
	pkt := udp4(src, 68, dst.Addr(), dst.Port(), m.Marshal())
	sa := &syscall.SockaddrLinklayer{Protocol: htons(syscall.ETH_P_IP), Ifindex: p.ifidx, Halen: 6,
		Addr: [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}
	var serr error
	err := p.raw.Write(func(fd uintptr) bool {
		serr = syscall.Sendto(int(fd), pkt, 0, sa)
		return serr != syscall.EAGAIN
	})
	return errors.Join(err, serr)
}

// udp4 builds an IPv4 packet carrying a UDP datagram, checksums included.
func udp4(src netip.Addr, sport uint16, dst netip.Addr, dport uint16, payload []byte) []byte {
	b := make([]byte, 28+len(payload))
	b[0], b[8], b[9] = 0x45, 64, 17 // version 4, IHL 5; TTL; UDP
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	s, d := src.As4(), dst.As4()
	copy(b[12:16], s[:])
	copy(b[16:20], d[:])
	binary.BigEndian.PutUint16(b[10:], checksum(b[:20], 0))
	u := b[20:]
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	copy(u[8:], payload)
	pseudo := uint32(s[0])<<8 + uint32(s[1]) + uint32(s[2])<<8 + uint32(s[3]) +
		uint32(d[0])<<8 + uint32(d[1]) + uint32(d[2])<<8 + uint32(d[3]) + 17 + uint32(len(u))
	c := checksum(u, pseudo)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], c)
	return b
}

func checksum(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// recv returns the next DHCP reply to port 68 on the interface.
func (p *Probe) recv(buf []byte) (*Packet, netip.AddrPort, error) {
	for {
		n, err := p.file.Read(buf)
		if err != nil {
			return nil, netip.AddrPort{}, err
		}
		b := buf[:n]
		if len(b) < 28 || b[0]>>4 != 4 || b[9] != 17 {
			continue
		}
		ihl := int(b[0]&0x0f) * 4
		if len(b) < ihl+8 || binary.BigEndian.Uint16(b[ihl+2:]) != 68 {
			continue
		}
		pkt, err := ParsePacket(b[ihl+8:])
		if err != nil || pkt.Op != 2 {
			continue
		}
		from := netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[12:16])), binary.BigEndian.Uint16(b[ihl:]))
		return pkt, from, nil
	}
}

func (p *Probe) message(typ byte, xid uint32) *Packet {
	m := &Packet{Op: 1, XID: xid, Flags: 0x8000, CHAddr: p.mac, Options: map[byte][]byte{
		OptMsgType:  {typ},
		OptClientID: append([]byte{1}, p.mac...),
		OptParams:   {1, 3, 6, 12, 15, 26, 28, 42, 43, 51, 54, 58, 59, 60, 66, 67, 97},
	}}
	if p.Opts.Hostname != "" {
		m.Options[OptHostname] = []byte(p.Opts.Hostname)
	}
	if p.Opts.VendorClass != "" {
		m.Options[OptVendorClass] = []byte(p.Opts.VendorClass)
	}
	if p.Opts.UserClass != "" {
		m.Options[OptUserClass] = []byte(p.Opts.UserClass)
	}
	if p.Opts.ClientArch != nil {
		m.Options[OptClientArch] = binary.BigEndian.AppendUint16(nil, *p.Opts.ClientArch)
		m.Options[OptClientNDI] = []byte{1, 2, 1}
	}
	for c, v := range p.Opts.Options {
		m.Options[c] = v
	}
	return m
}

// Exchange broadcasts m from 0.0.0.0:68 to 255.255.255.255:67 and
// collects the replies with its xid for the probe's Wait, or until stop
// accepts one.
func (p *Probe) Exchange(m *Packet, stop func(*Reply) bool) ([]*Reply, error) {
	return p.ExchangeTo(m, netip.IPv4Unspecified(), bcast, stop)
}

// ExchangeTo is Exchange from src:68 to dst (e.g. a PXE boot server's
// port 4011). Replies to a unicast src need src on the interface (for ARP).
func (p *Probe) ExchangeTo(m *Packet, src netip.Addr, dst netip.AddrPort, stop func(*Reply) bool) ([]*Reply, error) {
	sent := time.Now()
	if err := p.send(m, src, dst); err != nil {
		return nil, err
	}
	var replies []*Reply
	buf := make([]byte, 9000)
	p.file.SetReadDeadline(sent.Add(p.Opts.Wait))
	for {
		pkt, from, err := p.recv(buf)
		if err != nil {
			if isTimeout(err) {
				return replies, nil
			}
			return replies, err
		}
		if pkt.XID != m.XID {
			continue
		}
		r := &Reply{Packet: pkt, From: from, After: time.Since(sent)}
		replies = append(replies, r)
		if stop != nil && stop(r) {
			return replies, nil
		}
	}
}

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// Discover sends a DISCOVER and returns every reply within Wait: OFFERs
// from every server, proxyDHCP offers (yiaddr 0.0.0.0) included.
func (p *Probe) Discover() ([]*Reply, error) {
	return p.Exchange(p.message(Discover, rand.Uint32()), nil)
}

// Request sends a REQUEST for an offer (selecting state: requested address
// and server id) and returns the first ACK or NAK, with everything else
// received meanwhile.
func (p *Probe) Request(offer *Reply) (*Reply, []*Reply, error) {
	m := p.message(Request, offer.XID)
	ip := offer.YIAddr.As4()
	m.Options[OptRequestedIP] = ip[:]
	if id := offer.Addr(OptServerID); id.IsValid() {
		v := id.As4()
		m.Options[OptServerID] = v[:]
	}
	return p.requestOnce(m)
}

// Rebind sends a REQUEST in the REBINDING state (ciaddr set, no server
// id, broadcast), as a client does when its server stopped answering
// renewals: any server that knows the lease may ACK it. The address must
// be the probe's to receive a unicast answer; a broadcast one always
// arrives.
func (p *Probe) Rebind(ip netip.Addr) (*Reply, []*Reply, error) {
	m := p.message(Request, rand.Uint32())
	m.CIAddr = ip
	return p.requestOnce(m)
}

// InitReboot sends a REQUEST in the INIT-REBOOT state (requested address,
// no ciaddr, no server id, broadcast), as a rebooting client does to keep
// its address: the server ACKs, or NAKs an address that is not the
// client's.
func (p *Probe) InitReboot(ip netip.Addr) (*Reply, []*Reply, error) {
	m := p.message(Request, rand.Uint32())
	v := ip.As4()
	m.Options[OptRequestedIP] = v[:]
	return p.requestOnce(m)
}

func (p *Probe) requestOnce(m *Packet) (*Reply, []*Reply, error) {
	all, err := p.Exchange(m, func(r *Reply) bool { return r.Type() == Ack || r.Type() == Nak })
	for _, r := range all {
		if r.Type() == Ack || r.Type() == Nak {
			return r, all, err
		}
	}
	if err == nil {
		err = fmt.Errorf("no ACK or NAK within %s to %s", p.Opts.Wait, m.Summary())
	}
	return nil, all, err
}

// DORA runs a full exchange with the first server offering an address and
// returns its OFFER and ACK (or NAK), plus every reply to the DISCOVER.
func (p *Probe) DORA() (offer, ack *Reply, offers []*Reply, err error) {
	offers, err = p.Discover()
	if err != nil {
		return nil, nil, offers, err
	}
	for _, o := range offers {
		if o.Type() == Offer && o.YIAddr.IsValid() && !o.YIAddr.IsUnspecified() {
			offer = o
			break
		}
	}
	if offer == nil {
		return nil, nil, offers, fmt.Errorf("no OFFER with an address within %s (%d replies)", p.Opts.Wait, len(offers))
	}
	ack, _, err = p.Request(offer)
	return offer, ack, offers, err
}

// BootServerRequest asks a PXE boot server (a proxyDHCP server's port
// 4011) for the boot file of a boot item, as a PXE ROM does after a proxy
// offer listed boot servers in option 43: a REQUEST from the client's
// bound address with option 43 sub-option 71 (item type, layer 0). It
// returns the ACK (its file and siaddr say what to fetch from where). The
// client address must be on the probe's interface.
func (p *Probe) BootServerRequest(server netip.AddrPort, client netip.Addr, item uint16) (*Reply, error) {
	m := p.message(Request, rand.Uint32())
	m.Flags = 0
	m.CIAddr = client
	m.Options[OptVendorOpts] = []byte{71, 4, byte(item >> 8), byte(item), 0, 0, 255}
	all, err := p.ExchangeTo(m, client, server, func(r *Reply) bool { return r.Type() == Ack })
	for _, r := range all {
		if r.Type() == Ack {
			return r, err
		}
	}
	if err == nil {
		err = fmt.Errorf("no ACK from the boot server %s within %s", server, p.Opts.Wait)
	}
	return nil, err
}

// PXEBootServers decodes option 43's PXE_BOOT_SERVERS (sub-option 8):
// boot server type -> addresses.
func (p *Packet) PXEBootServers() map[uint16][]netip.Addr {
	out := map[uint16][]netip.Addr{}
	v := p.Options[OptVendorOpts]
	for i := 0; i+1 < len(v) && v[i] != 255; {
		if v[i] == 0 {
			i++
			continue
		}
		code, n := v[i], int(v[i+1])
		if i+2+n > len(v) {
			break
		}
		if code == 8 {
			b := v[i+2 : i+2+n]
			for j := 0; j+3 <= len(b); {
				typ, cnt := uint16(b[j])<<8|uint16(b[j+1]), int(b[j+2])
				j += 3
				for k := 0; k < cnt && j+4 <= len(b); k++ {
					out[typ] = append(out[typ], netip.AddrFrom4([4]byte(b[j:j+4])))
					j += 4
				}
			}
		}
		i += 2 + n
	}
	return out
}
