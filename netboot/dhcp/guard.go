package dhcp

import (
	"log/slog"
	"net/netip"
	"sync"
	"time"
)

// Reasons a relayed packet is dropped, the values of the reason label of
// kiln_dhcp_relay_dropped_total.
const (
	relayUnknownGiaddr = "unknown_giaddr"      // giaddr in no subnet this rack serves
	relayOtherLink     = "giaddr_other_link"   // giaddr in a managed subnet not on the receiving interface
	relayNotAllowed    = "relay_not_allowed"   // the sender is not in the subnet's allowedRelays
	relayToProxyPort   = "relay_to_proxy_port" // relayed to the proxyDHCP port
)

var relayReasons = []string{relayUnknownGiaddr, relayOtherLink, relayNotAllowed, relayToProxyPort}

// warnEvery is the least time between two warnings of one kind (per
// reason, per subnet): a flood is reported, not logged per packet.
const warnEvery = time.Minute

// dropRelayed counts a refused relayed packet and warns, at most once a
// minute per reason, with how many were dropped since the last warning.
func (s *Server) dropRelayed(t *txn, reason string, giaddr netip.Addr) {
	s.m.relayDropped.WithLabelValues(reason).Inc()
	if n, ok := s.warned.due("relay/"+reason, t.now); ok {
		s.log.Warn("dropped relayed DHCP packets", "reason", reason, "giaddr", giaddr, "sender", t.in.Peer.Addr().Unmap(),
			"interface", t.in.Interface, "mac", t.req.ClientHWAddr.String(), "dropped_since_last_warning", n)
	}
}

// warnLimiter spaces warnings of one key by warnEvery and counts the
// occurrences in between.
type warnLimiter struct {
	mu   sync.Mutex
	last map[string]time.Time
	n    map[string]int
}

// due reports whether a warning for key is due now, and how many
// occurrences it covers.
func (w *warnLimiter) due(key string, now time.Time) (int, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.last == nil {
		w.last, w.n = map[string]time.Time{}, map[string]int{}
	}
	w.n[key]++
	if l, ok := w.last[key]; ok && now.Sub(l) < warnEvery {
		return 0, false
	}
	n := w.n[key]
	w.last[key], w.n[key] = now, 0
	return n, true
}

// Pool levels, for warnings on the way up.
const (
	poolOK = iota
	poolLow
	poolExhausted
)

// poolWatch warns when a subnet's dynamic range passes 90% used and when
// it runs out: a log line at warn and a rack event, once per crossing
// (and again at most every warnEvery while an exhausted range refuses
// clients).
type poolWatch struct {
	log    *slog.Logger
	events EventSink
	mu     sync.Mutex
	level  map[string]int
	warned warnLimiter
}

// check updates subnet's level from its dynamic range's numbers.
func (w *poolWatch) check(subnet string, free, size int, now time.Time) {
	if size <= 0 {
		return
	}
	lvl := poolOK
	switch {
	case free <= 0:
		lvl = poolExhausted
	case float64(size-free) >= 0.9*float64(size):
		lvl = poolLow
	}
	w.mu.Lock()
	prev := w.level[subnet]
	w.level[subnet] = lvl
	w.mu.Unlock()
	if lvl <= prev {
		return
	}
	w.warn(subnet, lvl, free, size, now)
}

// exhausted is a client refused for want of a free address.
func (w *poolWatch) exhausted(subnet string, now time.Time) {
	w.mu.Lock()
	w.level[subnet] = poolExhausted
	w.mu.Unlock()
	if _, ok := w.warned.due(subnet, now); ok {
		w.warn(subnet, poolExhausted, 0, -1, now)
	}
}

func (w *poolWatch) warn(subnet string, lvl, free, size int, now time.Time) {
	typ, msg := EventPoolLow, "dynamic range more than 90% used"
	if lvl == poolExhausted {
		typ, msg = EventPoolExhausted, "dynamic range exhausted: unknown MACs get no address"
	}
	args := []any{"subnet", subnet}
	if size >= 0 {
		args = append(args, "free", free, "size", size)
	}
	w.log.Warn(msg, args...)
	w.events.Record(Event{Time: now, Type: typ, Subnet: subnet})
}
