package dhcp

import (
	"context"
	"net/netip"
	"slices"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Arrival says how a request reached the server.
type Arrival struct {
	Interface string         // the interface it arrived on
	Addrs     []netip.Prefix // that interface's IPv4 addresses
	Local     netip.Addr     // its destination address, when known (a unicast one of ours, or broadcast)
	Peer      netip.AddrPort // its sender: the client, or the relay
	Proxy     bool           // it came to the proxyDHCP port (4011)
}

// txn is one request being handled.
type txn struct {
	req    *dhcpv4.DHCPv4
	in     Arrival
	now    time.Time
	cfg    *config
	sn     *subnet
	pool   *pool
	server netip.Addr // our address for this client: option 54, {server}
	relay  netip.Addr // giaddr, when relayed
	raw    string     // MAC bytes
	cl     client
	host   *host // the known host on this subnet, or nil
}

// Handle answers one decoded request. It returns the reply and where to
// send it, or nil for no reply. It blocks while a new lease is being
// stored (group commit), and never panics on any input.
func (s *Server) Handle(ctx context.Context, req *dhcpv4.DHCPv4, in Arrival) (*dhcpv4.DHCPv4, netip.AddrPort) {
	k, bad := classify(req)
	if bad {
		s.m.packet(kindMalformed, resIgnored)
		return nil, netip.AddrPort{}
	}
	reply, dst, res := s.handle(ctx, req, in, k)
	s.m.packet(k, res)
	if s.debug {
		s.log.Debug("dhcp request", "type", kindNames[k], "result", resultNames[res], "mac", req.ClientHWAddr.String(),
			"xid", req.TransactionID.String(), "interface", in.Interface, "dst", dst.String())
	}
	if reply == nil {
		return nil, netip.AddrPort{}
	}
	return reply, dst
}

// classify returns the request's kind, and whether it is malformed: not a
// BOOTREQUEST, no hardware address, no message type (BOOTP), or missing
// what its type needs.
func classify(req *dhcpv4.DHCPv4) (msgKind, bool) {
	if req == nil || req.OpCode != dhcpv4.OpcodeBootRequest || len(req.ClientHWAddr) == 0 || len(req.ClientHWAddr) > 16 || req.Options == nil {
		return kindMalformed, true
	}
	if allZero(req.ClientHWAddr) {
		return kindMalformed, true
	}
	mt, ok := req.Options[optMessageType]
	if !ok || len(mt) != 1 {
		return kindMalformed, true
	}
	_, badReq := optAddr(req, optRequestedIP)
	_, badSID := optAddr(req, optServerID)
	if badReq || badSID {
		return kindMalformed, true
	}
	switch dhcpv4.MessageType(mt[0]) {
	case dhcpv4.MessageTypeDiscover:
		return kindDiscover, false
	case dhcpv4.MessageTypeRequest:
		if r, _ := optAddr(req, optRequestedIP); !r.IsValid() && !ipv4(req.ClientIPAddr).IsValid() {
			return kindRequest, true
		}
		return kindRequest, false
	case dhcpv4.MessageTypeRelease:
		return kindRelease, !ipv4(req.ClientIPAddr).IsValid()
	case dhcpv4.MessageTypeDecline:
		r, _ := optAddr(req, optRequestedIP)
		return kindDecline, !r.IsValid()
	case dhcpv4.MessageTypeInform:
		return kindInform, !ipv4(req.ClientIPAddr).IsValid()
	default:
		return kindOther, false
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func (s *Server) handle(ctx context.Context, req *dhcpv4.DHCPv4, in Arrival, k msgKind) (*dhcpv4.DHCPv4, netip.AddrPort, result) {
	if s.stopped.Load() || req.HopCount > 16 {
		return nil, netip.AddrPort{}, resIgnored
	}
	t := txn{req: req, in: in, now: s.now(), cfg: s.cfg.Load(), raw: string(req.ClientHWAddr)}
	if ok, _ := s.macLimit.Allow(t.raw, t.now); !ok {
		s.m.macLimited.Inc()
		return nil, netip.AddrPort{}, resIgnored
	}
	if !s.route(&t) {
		return nil, netip.AddrPort{}, resIgnored
	}
	t.cl = parseClient(req)
	t.pool = t.sn.pool
	if t.sn.Mode == ModeProxy {
		return s.proxy(&t, k)
	}
	if in.Proxy {
		return nil, netip.AddrPort{}, resIgnored
	}
	t.host = t.sn.hosts[t.raw]
	switch k {
	case kindDiscover:
		s.seen(&t)
		return s.discover(&t)
	case kindRequest:
		s.seen(&t)
		return s.request(ctx, &t)
	case kindRelease:
		return s.release(&t)
	case kindDecline:
		return s.decline(&t)
	case kindInform:
		return s.inform(&t)
	}
	return nil, netip.AddrPort{}, resIgnored
}

// route finds the subnet a request belongs to and our address for it.
// Relayed requests (giaddr set) belong to the relay or proxy subnet
// holding giaddr, or to a managed subnet holding both giaddr and the
// receiving interface (a relay on our own link, like perfdhcp); direct
// ones to a managed or proxy subnet holding an address of the receiving
// interface; 4011 requests to the proxy subnet holding the client.
// Anything else is not ours.
func (s *Server) route(t *txn) bool {
	in := &t.in
	if gi := ipv4(t.req.GatewayIPAddr); gi.IsValid() {
		if in.Proxy {
			s.dropRelayed(t, relayToProxyPort, gi)
			return false
		}
		sn := t.cfg.subnetOf(gi)
		if sn == nil {
			s.dropRelayed(t, relayUnknownGiaddr, gi)
			return false
		}
		if sn.Mode == ModeManaged && !hasAddrIn(in.Addrs, sn.Prefix) {
			s.dropRelayed(t, relayOtherLink, gi)
			return false
		}
		if len(sn.AllowedRelays) > 0 && !slices.Contains(sn.AllowedRelays, in.Peer.Addr().Unmap()) {
			s.dropRelayed(t, relayNotAllowed, gi)
			return false
		}
		t.sn, t.relay = sn, gi
		t.server = localAddr(in, sn.Prefix)
		return t.server.IsValid()
	}
	if in.Proxy {
		cli := ipv4(t.req.ClientIPAddr)
		if !cli.IsValid() {
			cli = in.Peer.Addr().Unmap()
		}
		sn := t.cfg.subnetOf(cli)
		if sn == nil || sn.Mode != ModeProxy {
			return false
		}
		t.sn = sn
		t.server = localAddr(in, sn.Prefix)
		return t.server.IsValid()
	}
	// Direct: the subnets of the interface's addresses.
	var cands [4]*subnet
	var srv [4]netip.Addr
	n := 0
	for _, p := range in.Addrs {
		sn := t.cfg.subnetOf(p.Addr())
		if sn == nil || sn.Mode == ModeRelay || n == len(cands) {
			continue
		}
		cands[n], srv[n] = sn, p.Addr()
		n++
	}
	if n == 0 {
		return false
	}
	pick := 0
	if n > 1 {
		pick = -1
		hint, _ := optAddr(t.req, optRequestedIP)
		if ci := ipv4(t.req.ClientIPAddr); ci.IsValid() {
			hint = ci
		}
		for i := range n {
			if hint.IsValid() && cands[i].Prefix.Contains(hint) {
				pick = i
				break
			}
		}
		for i := 0; i < n && pick < 0; i++ {
			if cands[i].hosts[t.raw] != nil {
				pick = i
			}
		}
		for i := 0; i < n && pick < 0; i++ {
			if cands[i].Mode == ModeManaged && cands[i].Dynamic != nil {
				pick = i
			}
		}
		pick = max(pick, 0)
	}
	t.sn, t.server = cands[pick], srv[pick]
	return true
}

func hasAddrIn(addrs []netip.Prefix, p netip.Prefix) bool {
	for _, a := range addrs {
		if p.Contains(a.Addr()) {
			return true
		}
	}
	return false
}

// localAddr is our address for a request that was sent to us by unicast
// (relayed, or to 4011): its destination when that is ours, else the
// interface's address in the client's subnet, else its first.
func localAddr(in *Arrival, client netip.Prefix) netip.Addr {
	for _, a := range in.Addrs {
		if a.Addr() == in.Local {
			return in.Local
		}
	}
	for _, a := range in.Addrs {
		if client.Contains(a.Addr()) {
			return a.Addr()
		}
	}
	if len(in.Addrs) > 0 {
		return in.Addrs[0].Addr()
	}
	return netip.Addr{}
}

// claimFor is what the client may have on its subnet.
func (t *txn) claim() claim {
	c := claim{raw: t.raw, mac: t.req.ClientHWAddr.String()}
	if h := t.host; h != nil {
		c.machine, c.hostname = h.Machine, h.Hostname
		c.kind = claimAuto
		if h.IP.IsValid() {
			c.kind, c.static = claimStatic, toIP4(h.IP)
		}
	}
	return c
}

// dest is where a reply goes (RFC 2131 4.1): to the relay's server port;
// to ciaddr when the client has an address; else broadcast on the link
// (a client without an address cannot answer ARP, and broadcasting is
// always allowed). NAKs are broadcast.
func (s *Server) dest(t *txn, r *dhcpv4.DHCPv4, isNak bool) netip.AddrPort {
	if t.relay.IsValid() {
		if isNak {
			r.SetBroadcast()
		}
		return netip.AddrPortFrom(t.relay, s.serverPort)
	}
	if !isNak {
		if ci := ipv4(t.req.ClientIPAddr); ci.IsValid() {
			return netip.AddrPortFrom(ci, s.clientPort)
		}
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), s.clientPort)
}

func (s *Server) discover(t *txn) (*dhcpv4.DHCPv4, netip.AddrPort, result) {
	c := t.claim()
	var pref ip4
	if a, _ := optAddr(t.req, optRequestedIP); a.IsValid() && t.sn.Prefix.Contains(a) {
		pref = toIP4(a)
	}
	a, ok := t.pool.offer(c, pref, t.now)
	if !ok {
		s.noAddress(t, c)
		return nil, netip.AddrPort{}, resIgnored
	}
	ip := a.addr()
	r := newReply(t.req, dhcpv4.MessageTypeOffer, t.server, t.relay)
	r.YourIPAddr = ip.AsSlice()
	setNetwork(r, t.sn, t.host)
	setLeaseTime(r, t.sn, t.sn.LeaseTime)
	if b, ok := t.cfg.bootFor(&t.cl, t.server, t.req.ClientHWAddr, ip); ok {
		setBoot(r, b)
	}
	s.event(EventOffered, t, ip)
	return r, s.dest(t, r, false), resOffered
}

// noAddress says why a client got nothing, at a level matching how much
// it matters.
func (s *Server) noAddress(t *txn, c claim) {
	switch {
	case c.kind == claimStatic:
		s.log.Warn("static address not available (another MAC's lease, declined, or one of this host's addresses); not answering", "mac", c.mac,
			"machine", c.machine, "ip", c.static.String(), "subnet", t.sn.Name)
	case c.kind == claimAuto:
		s.log.Warn("no address left to allocate for a machine", "mac", c.mac, "machine", c.machine, "subnet", t.sn.Name)
	case t.sn.Dynamic != nil:
		s.poolWatch.exhausted(t.sn.Name, t.now)
	}
}

func (s *Server) request(ctx context.Context, t *txn) (*dhcpv4.DHCPv4, netip.AddrPort, result) {
	sid, _ := optAddr(t.req, optServerID)
	reqIP, _ := optAddr(t.req, optRequestedIP)
	ci := ipv4(t.req.ClientIPAddr)
	var want netip.Addr
	switch {
	case sid.IsValid(): // SELECTING
		if sid != t.server && !hasAddr(t.in.Addrs, sid) {
			t.pool.dropHold(t.raw, t.now) // it chose another server
			return nil, netip.AddrPort{}, resIgnored
		}
		want = reqIP
		if !want.IsValid() {
			want = ci
		}
	case reqIP.IsValid() && !ci.IsValid(): // INIT-REBOOT: only for a client we have a record of (acquire)
		want = reqIP
	default: // RENEWING (unicast) or REBINDING (broadcast)
		want = ci
	}
	if !t.sn.Prefix.Contains(want) {
		return s.nak(t, want, "requested address is not on this network")
	}
	c := t.claim()
	gr, v := t.pool.acquire(c, toIP4(want), t.now)
	switch v {
	case silent:
		if c.kind == claimStatic && toIP4(want) == c.static {
			s.noAddress(t, c)
		}
		return nil, netip.AddrPort{}, resIgnored
	case nak:
		return s.nak(t, want, "requested address is not yours")
	}
	lt := gr.lt
	if gr.save {
		err := s.commit.save(ctx, gr.lease)
		ended := t.pool.committed(gr, err, s.now())
		for _, l := range ended {
			s.commit.queue(l)
		}
		if err != nil {
			if !gr.failOK {
				return nil, netip.AddrPort{}, resError
			}
			lt = gr.failLT
		}
	} else {
		for _, l := range t.pool.committed(gr, nil, s.now()) {
			s.commit.queue(l)
		}
	}
	r := newReply(t.req, dhcpv4.MessageTypeAck, t.server, t.relay)
	r.ClientIPAddr = t.req.ClientIPAddr
	r.YourIPAddr = want.AsSlice()
	setNetwork(r, t.sn, t.host)
	setLeaseTime(r, t.sn, lt)
	if b, ok := t.cfg.bootFor(&t.cl, t.server, t.req.ClientHWAddr, want); ok {
		setBoot(r, b)
	}
	s.event(EventAcked, t, want)
	if c.kind == claimDynamic && gr.fresh && t.cfg.machines[t.raw] == "" {
		s.event(EventDiscovered, t, want)
		if s.debug {
			s.log.Debug("discovered an unknown MAC", "mac", c.mac, "ip", want, "subnet", t.sn.Name,
				"arch", archOf(&t.cl), "circuit_id", t.cl.circuitID)
		}
	}
	return r, s.dest(t, r, false), resAcked
}

func hasAddr(addrs []netip.Prefix, a netip.Addr) bool {
	for _, p := range addrs {
		if p.Addr() == a {
			return true
		}
	}
	return false
}

// nak refuses want; the event carries the refused address.
func (s *Server) nak(t *txn, want netip.Addr, why string) (*dhcpv4.DHCPv4, netip.AddrPort, result) {
	r := newReply(t.req, dhcpv4.MessageTypeNak, t.server, t.relay)
	r.Options[optMessage] = []byte(why)
	s.event(EventNaked, t, want)
	return r, s.dest(t, r, true), resNaked
}

func (s *Server) release(t *txn) (*dhcpv4.DHCPv4, netip.AddrPort, result) {
	if sid, _ := optAddr(t.req, optServerID); sid.IsValid() && sid != t.server && !hasAddr(t.in.Addrs, sid) {
		return nil, netip.AddrPort{}, resIgnored
	}
	ci := ipv4(t.req.ClientIPAddr)
	if !t.sn.Prefix.Contains(ci) {
		return nil, netip.AddrPort{}, resIgnored
	}
	l, save, ok := t.pool.release(t.raw, toIP4(ci), t.now)
	if !ok {
		return nil, netip.AddrPort{}, resIgnored
	}
	if save {
		s.commit.queue(l)
	}
	s.event(EventReleased, t, ci)
	return nil, netip.AddrPort{}, resHandled
}

func (s *Server) decline(t *txn) (*dhcpv4.DHCPv4, netip.AddrPort, result) {
	if sid, _ := optAddr(t.req, optServerID); sid.IsValid() && sid != t.server && !hasAddr(t.in.Addrs, sid) {
		return nil, netip.AddrPort{}, resIgnored
	}
	a, _ := optAddr(t.req, optRequestedIP)
	if !t.sn.Prefix.Contains(a) {
		return nil, netip.AddrPort{}, resIgnored
	}
	l, ok := t.pool.decline(t.raw, toIP4(a), t.now)
	if !ok {
		return nil, netip.AddrPort{}, resIgnored
	}
	s.commit.queue(l)
	s.event(EventDeclined, t, a)
	s.log.Warn("client declined its address: another host uses it; quarantined", "mac", l.MAC,
		"machine", t.cfg.machines[t.raw], "ip", a, "subnet", t.sn.Name, "for", s.opts.DeclineHold)
	return nil, netip.AddrPort{}, resHandled
}

// inform answers a DHCPINFORM: configuration only, to ciaddr.
func (s *Server) inform(t *txn) (*dhcpv4.DHCPv4, netip.AddrPort, result) {
	ci := ipv4(t.req.ClientIPAddr)
	if !t.sn.Prefix.Contains(ci) {
		return nil, netip.AddrPort{}, resIgnored
	}
	r := newReply(t.req, dhcpv4.MessageTypeAck, t.server, t.relay)
	r.ClientIPAddr = ci.AsSlice()
	setNetwork(r, t.sn, t.host)
	if b, ok := t.cfg.bootFor(&t.cl, t.server, t.req.ClientHWAddr, ci); ok {
		setBoot(r, b)
	}
	return r, s.dest(t, r, false), resAcked
}

// proxy answers PXE clients on a proxy subnet: a DISCOVER (port 67) with
// an address-less OFFER carrying the boot file, a REQUEST to 4011 with
// an ACK carrying it. Everything else is the site DHCP server's.
func (s *Server) proxy(t *txn, k msgKind) (*dhcpv4.DHCPv4, netip.AddrPort, result) {
	if !t.cl.pxe {
		return nil, netip.AddrPort{}, resIgnored
	}
	var mt dhcpv4.MessageType
	switch {
	case k == kindDiscover && !t.in.Proxy:
		mt = dhcpv4.MessageTypeOffer
	case k == kindRequest && t.in.Proxy:
		mt = dhcpv4.MessageTypeAck
	default:
		return nil, netip.AddrPort{}, resIgnored
	}
	t.host = t.sn.hosts[t.raw]
	s.seen(t)
	ci := ipv4(t.req.ClientIPAddr)
	b, ok := t.cfg.bootFor(&t.cl, t.server, t.req.ClientHWAddr, ci)
	if !ok {
		return nil, netip.AddrPort{}, resIgnored
	}
	r := newReply(t.req, mt, t.server, t.relay)
	if b.vendor == nil {
		b.vendor = vendorPXE
	}
	setBoot(r, b)
	if !t.cl.http {
		vi := pxeVendorInfo
		if item := subOption(t.req.Options[optVendorInfo], subPXEBootItem); len(item) == 4 {
			vi = append([]byte{subPXEDiscovery, 1, 8, subPXEBootItem, 4}, item...)
			vi = append(vi, 255)
		}
		r.Options[optVendorInfo] = vi
	}
	if v, ok := t.req.Options[optClientUUID]; ok {
		r.Options[optClientUUID] = v
	}
	var dst netip.AddrPort
	switch {
	case t.relay.IsValid():
		dst = netip.AddrPortFrom(t.relay, s.serverPort)
	case t.in.Proxy:
		r.ClientIPAddr = t.req.ClientIPAddr
		dst = t.in.Peer
		if p := dst.Addr().Unmap(); !p.IsValid() || p.IsUnspecified() {
			dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), s.clientPort)
		}
	default:
		dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), s.clientPort)
	}
	if mt == dhcpv4.MessageTypeOffer {
		s.event(EventOffered, t, netip.Addr{})
		return r, dst, resOffered
	}
	s.event(EventAcked, t, ci)
	return r, dst, resAcked
}

func archOf(c *client) string {
	if !c.hasArch {
		return ""
	}
	return archName(c.arch)
}

func (s *Server) seen(t *txn) { s.event(EventSeen, t, netip.Addr{}) }

// event records what happened to the client.
func (s *Server) event(typ string, t *txn, ip netip.Addr) {
	s.events.Record(Event{
		Time:        t.now,
		Type:        typ,
		MAC:         t.req.ClientHWAddr.String(),
		Machine:     t.cfg.machines[t.raw],
		Subnet:      t.sn.Name,
		IP:          ip,
		Arch:        archOf(&t.cl),
		VendorClass: t.cl.vendor,
		UserClass:   t.cl.userClass,
		CircuitID:   t.cl.circuitID,
		Relay:       t.relay,
	})
}
