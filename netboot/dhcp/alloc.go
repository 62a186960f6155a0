package dhcp

import (
	"maps"
	"math/bits"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// geometry is what a pool needs of its subnet to decide which addresses
// it may give. It is replaced whole when the config changes.
type geometry struct {
	prefix      netip.Prefix
	first, last ip4 // host addresses: network+1 .. broadcast-1
	gateway     ip4 // 0: none
	dynamic     span
	hasDynamic  bool
	reserved    []span         // sorted by start
	statics     map[ip4]string // static IP → raw MAC of its host
	locals      map[ip4]bool   // this host's own addresses
	leaseTime   time.Duration
}

func (g *geometry) inDynamic(a ip4) bool { return g.hasDynamic && g.dynamic.contains(a) }

// reservedAt returns the reserved range containing a.
func (g *geometry) reservedAt(a ip4) (span, bool) {
	for _, r := range g.reserved {
		if r.contains(a) {
			return r, true
		}
		if r.lo > a {
			break
		}
	}
	return span{}, false
}

// excluded reports whether a is never handed out by allocation: outside
// the host addresses, the gateway, one of ours, reserved, or a host's
// static IP.
func (g *geometry) excluded(a ip4) bool {
	if a < g.first || a > g.last || a == g.gateway || g.locals[a] {
		return true
	}
	if _, ok := g.reservedAt(a); ok {
		return true
	}
	_, static := g.statics[a]
	return static
}

func (g *geometry) validDynamic(a ip4) bool { return g.inDynamic(a) && !g.excluded(a) }
func (g *geometry) validAuto(a ip4) bool    { return !g.inDynamic(a) && !g.excluded(a) }

// claimKind is what a MAC may have on a subnet.
type claimKind uint8

const (
	claimDynamic claimKind = iota // unknown MAC: an address of the dynamic range
	claimAuto                     // known host without a static IP: allocated once, then kept
	claimStatic                   // known host with a static IP
)

// claim is a MAC asking for an address.
type claim struct {
	kind              claimKind
	raw               string // MAC bytes
	mac               string // aa:bb:…
	static            ip4
	machine, hostname string
}

// entry is one address of a pool: its binding (lease), a tentative hold
// for an offer, and a quarantine after a DECLINE, each optional.
type entry struct {
	ip ip4
	// The binding.
	owner             string // raw MAC, "" for none
	mac               string
	machine, hostname string
	reserved          bool
	expires           time.Time
	updated           time.Time
	gen               uint64 // bumped at every change of the binding
	// What the store holds for this address, as far as we know.
	stored stored
	// An offer not yet requested.
	holder    string
	holdUntil time.Time
	// DECLINEd: unusable until then.
	declinedUntil time.Time
}

type stored struct {
	ok                bool
	owner             string
	reserved          bool
	expires           time.Time
	machine, hostname string
}

// active reports whether the binding holds its address.
func (e *entry) active(now time.Time) bool {
	return e.owner != "" && (e.reserved || e.expires.After(now))
}

// blocks reports whether the address is someone else's than raw's.
func (e *entry) blocks(raw string, now time.Time) bool {
	if e.declinedUntil.After(now) {
		return true
	}
	if e.holder != "" && e.holder != raw && e.holdUntil.After(now) {
		return true
	}
	return e.owner != "" && e.owner != raw && (e.reserved || e.expires.After(now))
}

// blocksStatic is blocks for a static claim: the inventory's static IP
// overrides another MAC's reservation once that MAC's lease time is over
// (a removed machine's, or an allocation the address was later taken from).
func (e *entry) blocksStatic(raw string, now time.Time) bool {
	if e.declinedUntil.After(now) {
		return true
	}
	if e.holder != "" && e.holder != raw && e.holdUntil.After(now) {
		return true
	}
	return e.owner != "" && e.owner != raw && e.expires.After(now)
}

// busy reports whether the address is taken for anyone.
func (e *entry) busy(now time.Time) bool {
	return e.declinedUntil.After(now) || (e.holder != "" && e.holdUntil.After(now)) || e.active(now)
}

// lease is the entry's binding as a Lease.
func (e *entry) lease(subnet string) Lease {
	return Lease{Subnet: subnet, IP: e.ip.addr(), MAC: e.mac, Machine: e.machine, Hostname: e.hostname,
		Reserved: e.reserved, Expires: e.expires, Updated: e.updated}
}

// pool is the lease state of one subnet. Its mutex is held only for
// in-memory work, never across a store call.
type pool struct {
	name        string
	offerHold   time.Duration
	declineHold time.Duration

	mu     sync.Mutex
	geo    *geometry // nil: the subnet is not served
	byIP   map[ip4]*entry
	byMAC  map[string]*entry // raw MAC → its binding
	heldBy map[string]*entry // raw MAC → the address offered to it
	// dyn has a bit per address of the dynamic range, set when the address
	// is excluded or has an entry: a clear bit is a free address.
	dyn       []uint64
	dynSize   uint32
	dynUsable int // addresses of the dynamic range that are not excluded
	cursor    uint32
	autoHint  ip4 // every address below it outside the dynamic range is taken
	lastSweep time.Time
}

func newPool(name string, offerHold, declineHold time.Duration) *pool {
	return &pool{name: name, offerHold: offerHold, declineHold: declineHold,
		byIP: map[ip4]*entry{}, byMAC: map[string]*entry{}, heldBy: map[string]*entry{}}
}

// setGeometry installs a subnet's new shape (nil: not served any more).
func (p *pool) setGeometry(g *geometry) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if sameShape(p.geo, g) {
		p.geo = g // same addresses: the bitmap stands
		return
	}
	p.geo = g
	p.dyn, p.dynSize, p.dynUsable, p.autoHint = nil, 0, 0, 0
	if g == nil {
		return
	}
	p.autoHint = g.first
	if !g.hasDynamic {
		return
	}
	n := uint32(g.dynamic.hi-g.dynamic.lo) + 1
	p.dynSize = n
	p.dyn = make([]uint64, (n+63)/64)
	if r := n % 64; r != 0 { // the tail of the last word is not an address
		p.dyn[len(p.dyn)-1] = ^uint64(0) << r
	}
	mark := func(a ip4) {
		if g.dynamic.contains(a) {
			off := uint32(a - g.dynamic.lo)
			p.dyn[off/64] |= 1 << (off % 64)
		}
	}
	if g.gateway != 0 {
		mark(g.gateway)
	}
	for a := range g.statics {
		mark(a)
	}
	for a := range g.locals {
		mark(a)
	}
	for _, r := range g.reserved {
		lo, hi := max(r.lo, g.dynamic.lo), min(r.hi, g.dynamic.hi)
		for a := uint64(lo); a <= uint64(hi); a++ {
			mark(ip4(a))
		}
	}
	used := 0
	for _, w := range p.dyn {
		used += bits.OnesCount64(w)
	}
	p.dynUsable = len(p.dyn)*64 - used
	for a := range p.byIP {
		mark(a)
	}
	if p.cursor >= n {
		p.cursor = 0
	}
}

// sameShape reports whether two geometries allow the same addresses.
func sameShape(a, b *geometry) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.prefix == b.prefix && a.first == b.first && a.last == b.last && a.gateway == b.gateway &&
		a.hasDynamic == b.hasDynamic && a.dynamic == b.dynamic && slices.Equal(a.reserved, b.reserved) &&
		maps.Equal(a.statics, b.statics) && maps.Equal(a.locals, b.locals)
}

// load adds a stored lease. For an address or MAC seen twice, the lease
// that holds its address wins, then the latest.
func (p *pool) load(l Lease, now time.Time) {
	mac, err := net.ParseMAC(l.MAC)
	if err != nil || !l.IP.Is4() {
		return
	}
	raw := string(mac)
	p.mu.Lock()
	defer p.mu.Unlock()
	ip := toIP4(l.IP)
	e := p.byIP[ip]
	if e != nil && e.owner != "" {
		newActive := l.Reserved || l.Expires.After(now)
		if e.active(now) && !newActive || e.active(now) == newActive && !l.Updated.After(e.updated) {
			return
		}
		if p.byMAC[e.owner] == e {
			delete(p.byMAC, e.owner)
		}
	}
	if e == nil {
		e = p.entryAt(ip)
	}
	e.owner, e.mac, e.machine, e.hostname = raw, mac.String(), l.Machine, l.Hostname
	e.reserved, e.expires, e.updated = l.Reserved, l.Expires, l.Updated
	if l.Ended() {
		e.expires = l.Updated
	}
	e.stored = stored{ok: true, owner: raw, reserved: l.Reserved, expires: e.expires, machine: l.Machine, hostname: l.Hostname}
	if cur := p.byMAC[raw]; cur == nil || better(e, cur, now) {
		p.byMAC[raw] = e
	}
}

// better reports whether a is a better current binding for its MAC than b.
func better(a, b *entry, now time.Time) bool {
	if a.reserved != b.reserved {
		return a.reserved
	}
	if a.active(now) != b.active(now) {
		return a.active(now)
	}
	return a.updated.After(b.updated)
}

// entryAt returns the entry of a, creating it.
func (p *pool) entryAt(a ip4) *entry {
	if e := p.byIP[a]; e != nil {
		return e
	}
	e := &entry{ip: a}
	p.byIP[a] = e
	if g := p.geo; g != nil && g.inDynamic(a) {
		off := uint32(a - g.dynamic.lo)
		p.dyn[off/64] |= 1 << (off % 64)
	}
	return e
}

// removeEntry forgets an address.
func (p *pool) removeEntry(e *entry) {
	delete(p.byIP, e.ip)
	if e.owner != "" && p.byMAC[e.owner] == e {
		delete(p.byMAC, e.owner)
	}
	if e.holder != "" && p.heldBy[e.holder] == e {
		delete(p.heldBy, e.holder)
	}
	g := p.geo
	if g == nil {
		return
	}
	if g.inDynamic(e.ip) {
		if !g.excluded(e.ip) {
			off := uint32(e.ip - g.dynamic.lo)
			p.dyn[off/64] &^= 1 << (off % 64)
		}
	} else if e.ip < p.autoHint {
		p.autoHint = e.ip
	}
}

// hold reserves a for raw's offer.
func (p *pool) hold(e *entry, raw string, now time.Time) {
	if e.holder != "" && e.holder != raw && p.heldBy[e.holder] == e {
		delete(p.heldBy, e.holder)
	}
	if prev := p.heldBy[raw]; prev != nil && prev != e {
		prev.holder, prev.holdUntil = "", time.Time{}
		p.tidy(prev, now)
	}
	e.holder, e.holdUntil = raw, now.Add(p.offerHold)
	p.heldBy[raw] = e
}

// tidy forgets e when nothing is left of it.
func (p *pool) tidy(e *entry, now time.Time) {
	if e.owner == "" && e.holder == "" && !e.declinedUntil.After(now) {
		p.removeEntry(e)
	}
}

// dropHold forgets raw's offer (it chose another server).
func (p *pool) dropHold(raw string, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e := p.heldBy[raw]; e != nil {
		e.holder, e.holdUntil = "", time.Time{}
		delete(p.heldBy, raw)
		p.tidy(e, now)
	}
}

// offer chooses the address to offer c and holds it for OfferHold.
// preferred is the address the client asked for (option 50), or 0.
func (p *pool) offer(c claim, preferred ip4, now time.Time) (ip4, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	g := p.geo
	if g == nil {
		return 0, false
	}
	switch c.kind {
	case claimStatic:
		a := c.static
		if a < g.first || a > g.last || g.locals[a] {
			return 0, false
		}
		if e := p.byIP[a]; e != nil && e.blocksStatic(c.raw, now) {
			return 0, false
		}
		return a, true
	case claimAuto:
		if e := p.byMAC[c.raw]; e != nil && e.reserved && g.validAuto(e.ip) && !e.blocks(c.raw, now) {
			return e.ip, true
		}
		if e := p.heldBy[c.raw]; e != nil && g.validAuto(e.ip) && !e.blocks(c.raw, now) {
			p.hold(e, c.raw, now)
			return e.ip, true
		}
		a, ok := p.allocAuto()
		if !ok {
			return 0, false
		}
		p.hold(p.entryAt(a), c.raw, now)
		return a, true
	default:
		if !g.hasDynamic {
			return 0, false
		}
		for _, e := range [2]*entry{p.byMAC[c.raw], p.heldBy[c.raw]} {
			if e != nil && g.validDynamic(e.ip) && !e.blocks(c.raw, now) {
				p.hold(e, c.raw, now)
				return e.ip, true
			}
		}
		if preferred != 0 && g.validDynamic(preferred) {
			if e := p.byIP[preferred]; e == nil || !e.blocks(c.raw, now) {
				p.hold(p.entryAt(preferred), c.raw, now)
				return preferred, true
			}
		}
		a, ok := p.allocDynamic(now)
		if !ok {
			return 0, false
		}
		p.hold(p.entryAt(a), c.raw, now)
		return a, true
	}
}

// allocDynamic finds a free address of the dynamic range, the next one
// after the last given (so that a returning MAC is likely to find its old
// address still free). When none is left, leases over and lapsed offers
// are forgotten, at most once a second.
func (p *pool) allocDynamic(now time.Time) (ip4, bool) {
	for attempt := 0; ; attempt++ {
		if off, ok := p.findFree(); ok {
			p.cursor = off + 1
			return p.geo.dynamic.lo + ip4(off), true
		}
		if attempt > 0 || now.Sub(p.lastSweep) < time.Second {
			return 0, false
		}
		p.lastSweep = now
		p.sweepLocked(now, true)
	}
}

// findFree returns the offset of the first clear bit at or after the
// cursor, wrapping around.
func (p *pool) findFree() (uint32, bool) {
	words := len(p.dyn)
	if words == 0 {
		return 0, false
	}
	start := p.cursor % p.dynSize
	w := int(start / 64)
	for i := 0; i <= words; i++ {
		idx := (w + i) % words
		word := p.dyn[idx]
		if i == 0 {
			word |= (1 << (start % 64)) - 1 // before the cursor: the wrap-around pass sees them
		}
		if word != ^uint64(0) {
			off := uint32(idx*64 + bits.TrailingZeros64(^word))
			if off < p.dynSize {
				return off, true
			}
		}
	}
	return 0, false
}

// allocAuto finds the lowest address outside the dynamic range that is
// not excluded and has never been used by anyone (no entry at all).
func (p *pool) allocAuto() (ip4, bool) {
	g := p.geo
	a := uint64(max(p.autoHint, g.first))
	for a <= uint64(g.last) {
		x := ip4(a)
		if g.inDynamic(x) {
			a = uint64(g.dynamic.hi) + 1
			continue
		}
		if r, ok := g.reservedAt(x); ok {
			a = uint64(r.hi) + 1
			continue
		}
		if _, static := g.statics[x]; static || x == g.gateway || g.locals[x] || p.byIP[x] != nil {
			a++
			continue
		}
		p.autoHint = x
		return x, true
	}
	p.autoHint = g.last
	return 0, false
}

// verdict is the answer to a REQUEST.
type verdict uint8

const (
	silent verdict = iota // no answer
	nak
	ack
)

// grant is an acknowledged binding: what to save, and what to tell the
// client whether or not the save succeeds.
type grant struct {
	e     *entry
	old   *entry // the MAC's previous binding, ended once this one is stored
	raw   string
	gen   uint64
	lease Lease
	save  bool          // the store does not have it yet
	lt    time.Duration // lease time for the reply
	// failOK: acknowledge even if the save fails (a static IP, a stored
	// reservation, or a stored lease's remaining time), with failLT.
	failOK bool
	failLT time.Duration
	fresh  bool // the MAC had no binding here that we know of
}

// minFailLT is the least remaining stored lease time that is still
// handed out (shortened) while the store fails.
const minFailLT = 10 * time.Second

// acquire decides a REQUEST of want by c, and binds it in memory when
// granted. A granted binding that needs saving must be finished with
// committed.
func (p *pool) acquire(c claim, want ip4, now time.Time) (grant, verdict) {
	p.mu.Lock()
	defer p.mu.Unlock()
	g := p.geo
	if g == nil {
		return grant{}, silent
	}
	switch c.kind {
	case claimStatic:
		if want != c.static {
			return grant{}, nak
		}
		if want < g.first || want > g.last || g.locals[want] {
			return grant{}, silent
		}
		if e := p.byIP[want]; e != nil && e.blocksStatic(c.raw, now) {
			return grant{}, silent // someone else holds it: no answer until it is free
		}
	case claimAuto:
		if v, ok := p.unrecorded(c.raw, want, now); !ok {
			return grant{}, v
		}
		if cur := p.byMAC[c.raw]; cur != nil && cur.reserved && g.validAuto(cur.ip) && !cur.blocks(c.raw, now) {
			if cur.ip != want {
				return grant{}, nak
			}
			break
		}
		if !g.validAuto(want) {
			return grant{}, nak
		}
		if e := p.byIP[want]; e != nil && e.blocks(c.raw, now) {
			return grant{}, nak
		}
	default:
		if !g.hasDynamic {
			return grant{}, silent
		}
		if v, ok := p.unrecorded(c.raw, want, now); !ok {
			return grant{}, v
		}
		if !g.validDynamic(want) {
			return grant{}, nak
		}
		if e := p.byIP[want]; e != nil && e.blocks(c.raw, now) {
			return grant{}, nak
		}
	}
	return p.bind(p.entryAt(want), c, now), ack
}

// unrecorded checks that a REQUEST of want by raw matches what the pool
// knows of raw: its binding or the address offered to it. A REQUEST
// never allocates an address that was not offered (RFC 2131 4.3.2: an
// INIT-REBOOT from a client with no record gets no answer; one with
// another record is refused). ok is false with the verdict otherwise.
// Static claims are recorded by the inventory and not checked here.
func (p *pool) unrecorded(raw string, want ip4, now time.Time) (verdict, bool) {
	cur := p.byMAC[raw]
	held := p.heldBy[raw]
	if held != nil && !held.holdUntil.After(now) {
		held = nil
	}
	switch {
	case cur != nil && cur.ip == want, held != nil && held.ip == want:
		return ack, true
	case cur == nil && held == nil:
		return silent, false
	}
	return nak, false
}

// bind gives e to c in memory.
func (p *pool) bind(e *entry, c claim, now time.Time) grant {
	lt := p.geo.leaseTime
	exp := now.Add(lt)
	old := p.byMAC[c.raw]
	fresh := old == nil && !(e.stored.ok && e.stored.owner == c.raw)
	if old == e {
		old = nil
	}
	if e.owner != "" && e.owner != c.raw && p.byMAC[e.owner] == e {
		delete(p.byMAC, e.owner)
	}
	reserved := c.kind != claimDynamic
	e.owner, e.mac, e.machine, e.hostname = c.raw, c.mac, c.machine, c.hostname
	e.reserved, e.expires, e.updated = reserved, exp, now
	e.gen++
	p.byMAC[c.raw] = e
	if e.holder != "" {
		if p.heldBy[e.holder] == e {
			delete(p.heldBy, e.holder)
		}
		e.holder, e.holdUntil = "", time.Time{}
	}
	gr := grant{e: e, old: old, raw: c.raw, gen: e.gen, lease: e.lease(p.name), save: true, lt: lt, fresh: fresh}
	st := e.stored
	mine := st.ok && st.owner == c.raw
	if mine && st.reserved == reserved && st.machine == c.machine && st.hostname == c.hostname &&
		!st.expires.Before(exp.Add(-lt/8)) {
		// Stored recently enough: answer from memory.
		gr.save = false
		if !reserved {
			gr.lt = st.expires.Sub(now)
			e.expires = st.expires
		}
	}
	switch {
	case c.kind == claimStatic:
		gr.failOK, gr.failLT = true, lt
	case mine && st.reserved && reserved:
		gr.failOK, gr.failLT = true, lt
	case mine && !st.reserved && !reserved && st.expires.Sub(now) >= minFailLT:
		gr.failOK, gr.failLT = true, st.expires.Sub(now).Truncate(time.Second)
	}
	return gr
}

// committed finishes a grant after its save. On success the previous
// binding of the MAC is ended (returned, to be saved). On failure a
// grant that may not be acknowledged is undone (the address stays held
// for the MAC for OfferHold); one that may is shortened to what is stored.
func (p *pool) committed(gr grant, err error, now time.Time) (ended []Lease) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := gr.e
	if err == nil {
		if l := gr.lease; gr.save {
			e.stored = stored{ok: true, owner: gr.raw, reserved: l.Reserved, expires: l.Expires, machine: l.Machine, hostname: l.Hostname}
		}
		if o := gr.old; o != nil && o.owner == gr.raw && p.byMAC[gr.raw] != o {
			ended = append(ended, p.end(o, now))
			p.tidy(o, now)
		}
		return ended
	}
	if e.gen != gr.gen {
		return nil // changed since: that change decides
	}
	if gr.failOK {
		if !e.reserved {
			e.expires = now.Add(gr.failLT)
		}
		return nil
	}
	if p.byMAC[gr.raw] == e {
		delete(p.byMAC, gr.raw)
		if o := gr.old; o != nil && o.owner == gr.raw {
			p.byMAC[gr.raw] = o
		}
	}
	e.owner, e.mac, e.machine, e.hostname, e.reserved, e.expires = "", "", "", "", false, time.Time{}
	e.gen++
	p.hold(e, gr.raw, now)
	return nil
}

// end ends e's binding and returns the ended lease to save. The stored
// state is taken as ended at once, so that a later grant saves again.
func (p *pool) end(e *entry, now time.Time) Lease {
	e.reserved, e.expires, e.updated = false, now, now
	e.gen++
	l := e.lease(p.name)
	e.stored = stored{ok: true, owner: e.owner, expires: now, machine: e.machine, hostname: e.hostname}
	if p.byMAC[e.owner] == e {
		delete(p.byMAC, e.owner)
	}
	e.owner, e.mac, e.machine, e.hostname = "", "", "", ""
	return l
}

// release handles a RELEASE of a by raw. A reservation stays (only its
// lease time ends); a dynamic lease is ended, and remembered for the MAC.
func (p *pool) release(raw string, a ip4, now time.Time) (l Lease, save, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.byIP[a]
	if e == nil || e.owner != raw {
		return Lease{}, false, false
	}
	if e.reserved {
		e.expires = now
		return e.lease(p.name), false, true
	}
	e.expires, e.updated = now, now
	e.gen++
	l = e.lease(p.name)
	e.stored = stored{ok: true, owner: raw, expires: now, machine: e.machine, hostname: e.hostname}
	return l, true, true
}

// decline handles a DECLINE of a by raw: the address is quarantined for
// declineHold and the MAC's binding (even a reservation) ends.
func (p *pool) decline(raw string, a ip4, now time.Time) (Lease, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.byIP[a]
	if e == nil || e.owner != raw {
		return Lease{}, false
	}
	e.declinedUntil = now.Add(p.declineHold)
	return p.end(e, now), true
}

// sweep forgets what no longer matters: lapsed offers and quarantines,
// and (with expired) the bindings of the dynamic range whose lease time
// is over. Reservations are never forgotten.
func (p *pool) sweep(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sweepLocked(now, false)
}

func (p *pool) sweepLocked(now time.Time, expired bool) {
	for _, e := range p.byIP {
		if e.holder != "" && !e.holdUntil.After(now) {
			if p.heldBy[e.holder] == e {
				delete(p.heldBy, e.holder)
			}
			e.holder, e.holdUntil = "", time.Time{}
		}
		if e.holder != "" || e.declinedUntil.After(now) {
			continue
		}
		if e.owner == "" || expired && !e.reserved && !e.expires.After(now) && p.geo != nil && p.geo.inDynamic(e.ip) {
			p.removeEntry(e)
		}
	}
}

// stats counts the active leases and the free and usable addresses of
// the dynamic range.
func (p *pool) stats(now time.Time) (leases, free, size int, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	g := p.geo
	if g == nil {
		return 0, 0, 0, false
	}
	busy := 0
	for _, e := range p.byIP {
		if e.active(now) {
			leases++
		}
		if g.inDynamic(e.ip) && !g.excluded(e.ip) && e.busy(now) {
			busy++
		}
	}
	return leases, p.dynUsable - busy, p.dynUsable, true
}
