package dhcp

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Boot defaults, applied to empty BootConfig fields.
const (
	defaultScriptURL        = "http://{server}:8080/boot/{mac}/script.ipxe"
	defaultHTTPBootURL      = "http://{server}:8080/ipxe/ipxe.efi"
	defaultHTTPBootARM64URL = "http://{server}:8080/ipxe/snp-arm64.efi"
	defaultBIOSFile         = "undionly.kpxe"
	defaultEFIFile          = "ipxe.efi"
	defaultEFIARM64         = "snp-arm64.efi"
	defaultLeaseTime        = time.Hour
	minLeaseTime            = time.Minute
	maxDynamicSize          = 1 << 22 // addresses tracked in a dynamic range's bitmap
)

// config is a compiled Config: immutable once built, swapped whole.
type config struct {
	raw     Config
	subnets []*subnet
	byName  map[string]*subnet
	// machines maps a raw MAC (string of its bytes) to its machine, on
	// any subnet, for events.
	machines map[string]string
	boot     BootConfig
}

// subnet is a Subnet with what serving it needs precomputed.
type subnet struct {
	Subnet
	pool  *pool // its lease state, kept across configs
	geo   *geometry
	hosts map[string]*host // by raw MAC
	// Option values, shared read-only by every reply.
	optMask, optRouter, optDNS, optDomain, optMTU []byte
	optLease                                      leaseOpts
}

// host is a Host with its option values.
type host struct {
	Host
	raw     string // MAC bytes
	optName []byte // option 12, nil without a name
}

// leaseOpts are the values of options 51, 58 and 59 for one lease time.
type leaseOpts struct{ lease, t1, t2 []byte }

func makeLeaseOpts(d time.Duration) leaseOpts {
	secs := func(d time.Duration) []byte {
		s := d / time.Second
		if s > 0xfffffffe {
			s = 0xfffffffe
		}
		return binary.BigEndian.AppendUint32(nil, uint32(s))
	}
	return leaseOpts{lease: secs(d), t1: secs(d / 2), t2: secs(d * 7 / 8)}
}

// compile builds a config. Subnets and hosts that cannot be served are
// skipped and reported; the rest is served.
func compile(cfg Config) (*config, []error) {
	var problems []error
	c := &config{
		raw:      cfg,
		byName:   make(map[string]*subnet, len(cfg.Subnets)),
		machines: make(map[string]string, len(cfg.Hosts)),
		boot:     bootDefaults(cfg.Boot),
	}
	for _, s := range cfg.Subnets {
		sn, err := compileSubnet(s)
		if err != nil {
			problems = append(problems, fmt.Errorf("subnet %s: %w", s.Name, err))
			continue
		}
		if _, dup := c.byName[s.Name]; dup {
			problems = append(problems, fmt.Errorf("subnet %s: defined twice, the first one is served", s.Name))
			continue
		}
		if o := c.overlapping(sn.Prefix); o != nil {
			problems = append(problems, fmt.Errorf("subnet %s: %s overlaps subnet %s, not served", s.Name, s.Prefix, o.Name))
			continue
		}
		c.subnets = append(c.subnets, sn)
		c.byName[s.Name] = sn
	}
	// Every static IP of every host, so that no allocation takes one.
	for _, h := range cfg.Hosts {
		if len(h.MAC) == 0 || len(h.MAC) > 16 {
			problems = append(problems, fmt.Errorf("host %s: MAC %q is not usable", h.Machine, h.MAC))
			continue
		}
		raw := string(h.MAC)
		c.machines[raw] = h.Machine
		sn := c.byName[h.Subnet]
		if sn == nil {
			problems = append(problems, fmt.Errorf("host %s (%s): subnet %q is not served", h.Machine, h.MAC, h.Subnet))
			continue
		}
		if h.IP.IsValid() {
			if !h.IP.Is4() || !sn.Prefix.Contains(h.IP) {
				problems = append(problems, fmt.Errorf("host %s (%s): %s is outside %s", h.Machine, h.MAC, h.IP, sn.Prefix))
				continue
			}
			ip := toIP4(h.IP)
			if other, taken := sn.geo.statics[ip]; taken && other != raw {
				problems = append(problems, fmt.Errorf("host %s (%s): %s is already another host's address", h.Machine, h.MAC, h.IP))
				continue
			}
			sn.geo.statics[ip] = raw
		}
		hh := &host{Host: h, raw: raw}
		name := h.Hostname
		if name == "" {
			name = h.Machine
		}
		if name != "" {
			hh.optName = []byte(truncate(name, 255))
		}
		sn.hosts[raw] = hh
	}
	return c, problems
}

func (c *config) overlapping(p netip.Prefix) *subnet {
	for _, s := range c.subnets {
		if s.Prefix.Overlaps(p) {
			return s
		}
	}
	return nil
}

// subnetOf returns the subnet containing a, or nil.
func (c *config) subnetOf(a netip.Addr) *subnet {
	for _, s := range c.subnets {
		if s.Prefix.Contains(a) {
			return s
		}
	}
	return nil
}

func bootDefaults(b BootConfig) BootConfig {
	def := func(s *string, d string) {
		if *s == "" {
			*s = d
		}
	}
	def(&b.ScriptURL, defaultScriptURL)
	def(&b.HTTPBootURL, defaultHTTPBootURL)
	def(&b.HTTPBootARM64URL, defaultHTTPBootARM64URL)
	def(&b.BIOSFile, defaultBIOSFile)
	def(&b.EFIFile, defaultEFIFile)
	def(&b.EFIARM64, defaultEFIARM64)
	return b
}

func compileSubnet(s Subnet) (*subnet, error) {
	switch s.Mode {
	case ModeManaged, ModeProxy, ModeRelay:
	case "":
		s.Mode = ModeManaged
	default:
		return nil, fmt.Errorf("unknown mode %q", s.Mode)
	}
	if !s.Prefix.IsValid() || !s.Prefix.Addr().Is4() {
		return nil, fmt.Errorf("prefix %s is not an IPv4 network", s.Prefix)
	}
	s.Prefix = s.Prefix.Masked()
	if s.Prefix.Bits() > 30 || s.Prefix.Bits() < 8 {
		return nil, fmt.Errorf("prefix %s: only /8 to /30 are served", s.Prefix)
	}
	if s.LeaseTime < minLeaseTime {
		s.LeaseTime = defaultLeaseTime
	}
	netw := toIP4(s.Prefix.Addr())
	bcast := netw | ip4(uint32(1)<<(32-s.Prefix.Bits())-1)
	g := &geometry{
		prefix:    s.Prefix,
		first:     netw + 1,
		last:      bcast - 1,
		statics:   map[ip4]string{},
		leaseTime: s.LeaseTime,
	}
	if s.Gateway.IsValid() {
		if !s.Gateway.Is4() || !s.Prefix.Contains(s.Gateway) {
			return nil, fmt.Errorf("gateway %s is outside %s", s.Gateway, s.Prefix)
		}
		g.gateway = toIP4(s.Gateway)
	}
	if s.Dynamic != nil && s.Mode != ModeProxy {
		r := *s.Dynamic
		if !r.Start.Is4() || !r.End.Is4() || !s.Prefix.Contains(r.Start) || !s.Prefix.Contains(r.End) || r.End.Less(r.Start) {
			return nil, fmt.Errorf("dynamic range %s-%s is not a range inside %s", r.Start, r.End, s.Prefix)
		}
		lo, hi := max(toIP4(r.Start), g.first), min(toIP4(r.End), g.last)
		if hi-lo >= maxDynamicSize {
			hi = lo + maxDynamicSize - 1
		}
		if lo <= hi {
			g.dynamic, g.hasDynamic = span{lo, hi}, true
		}
	}
	for _, r := range s.Reserved {
		if !r.Start.Is4() || !r.End.Is4() || r.End.Less(r.Start) {
			return nil, fmt.Errorf("reserved range %s-%s is not an IPv4 range", r.Start, r.End)
		}
		g.reserved = append(g.reserved, span{toIP4(r.Start), toIP4(r.End)})
	}
	slices.SortFunc(g.reserved, func(a, b span) int { return int(int64(a.lo) - int64(b.lo)) })
	sn := &subnet{Subnet: s, geo: g, hosts: map[string]*host{}}
	mask := ^uint32(0) << (32 - s.Prefix.Bits())
	sn.optMask = binary.BigEndian.AppendUint32(nil, mask)
	if s.Gateway.IsValid() {
		sn.optRouter = s.Gateway.AsSlice()
	}
	for _, d := range s.DNS {
		if d.Is4() {
			sn.optDNS = append(sn.optDNS, d.AsSlice()...)
		}
	}
	if len(sn.optDNS) > 255 {
		sn.optDNS = sn.optDNS[:252]
	}
	if s.Domain != "" {
		sn.optDomain = []byte(truncate(s.Domain, 255))
	}
	if s.MTU >= 68 && s.MTU != 1500 && s.MTU <= 0xffff {
		sn.optMTU = binary.BigEndian.AppendUint16(nil, uint16(s.MTU))
	}
	sn.optLease = makeLeaseOpts(s.LeaseTime)
	return sn, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// ip4 is an IPv4 address as a number, for arithmetic and compact keys.
type ip4 uint32

func toIP4(a netip.Addr) ip4 {
	b := a.As4()
	return ip4(binary.BigEndian.Uint32(b[:]))
}

func (a ip4) addr() netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(a))
	return netip.AddrFrom4(b)
}

func (a ip4) String() string { return a.addr().String() }

// span is an inclusive range of addresses.
type span struct{ lo, hi ip4 }

func (s span) contains(a ip4) bool { return s.lo <= a && a <= s.hi }
