package dhcp

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kilnhq/kiln/netboot/ratelimit"
	"github.com/prometheus/client_golang/prometheus"
)

// Options are how the server listens and times its decisions.
type Options struct {
	// Interfaces to serve, by name. Empty: every interface with an IPv4
	// address in a managed or proxy subnet, plus the interfaces that
	// route to the relay subnets' gateways; re-evaluated as the config
	// and the interfaces change.
	Interfaces []string
	Port       int // DHCP server port, default 67; clients are answered on Port+1 (68)
	ProxyPort  int // proxyDHCP port, default 4011; negative: not served
	// BatchDelay is the group-commit window: leases acknowledged within
	// it are stored with one Save. Default 2ms.
	BatchDelay time.Duration
	// OfferHold is how long an offered address stays reserved for the
	// client it was offered to. Default 30s.
	OfferHold time.Duration
	// DeclineHold is how long a DECLINEd address is not handed out.
	// Default 10m.
	DeclineHold time.Duration
	// MACRate is how many requests a second one MAC may make, with bursts
	// of MACBurst; more are dropped (and counted). Default 5/s, burst 20;
	// negative: unlimited. At most MACLimiters MACs are tracked (default
	// 65536), the least recently seen forgotten first.
	MACRate     float64
	MACBurst    int
	MACLimiters int
}

func (o Options) withDefaults() Options {
	if o.Port == 0 {
		o.Port = 67
	}
	if o.ProxyPort == 0 {
		o.ProxyPort = 4011
	}
	if o.BatchDelay == 0 {
		o.BatchDelay = 2 * time.Millisecond
	}
	if o.OfferHold <= 0 {
		o.OfferHold = 30 * time.Second
	}
	if o.DeclineHold <= 0 {
		o.DeclineHold = 10 * time.Minute
	}
	if o.MACRate == 0 {
		o.MACRate = 5
	}
	if o.MACBurst <= 0 {
		o.MACBurst = 20
	}
	if o.MACLimiters <= 0 {
		o.MACLimiters = 1 << 16
	}
	return o
}

const (
	refreshEvery = 5 * time.Second // interfaces re-read, lapsed offers swept
	maxInFlight  = 4096            // requests being handled at once
)

// Server is the DHCPv4 server of one rack.
type Server struct {
	opts       Options
	log        *slog.Logger
	debug      bool
	m          *Metrics
	events     EventSink
	commit     *committer
	serverPort uint16
	clientPort uint16
	now        func() time.Time

	cfg       atomic.Pointer[config]
	updateMu  sync.Mutex
	locals    map[ip4]bool  // this host's addresses (under updateMu)
	updated   chan struct{} // Update wakes the interface refresh
	poolsMu   sync.Mutex
	pools     map[string]*pool
	macLimit  *ratelimit.Keyed
	warned    warnLimiter // relay drop warnings
	poolWatch *poolWatch
	stopped   atomic.Bool // no longer the leader: answer nothing
	running   atomic.Bool

	// Transport.
	lmu       sync.Mutex
	listeners map[string]*listener
	sem       chan struct{}
	wg        sync.WaitGroup
	ready     chan struct{} // closed once the first interfaces are bound
}

// New builds a server for cfg, starting from the leases the store
// knows. It does not listen until Run.
func New(cfg Config, known []Lease, store LeaseStore, events EventSink, opts Options, m *Metrics, log *slog.Logger) (*Server, error) {
	if store == nil {
		return nil, errors.New("dhcp: a lease store is required")
	}
	opts = opts.withDefaults()
	if opts.Port < 1 || opts.Port > 65534 || opts.ProxyPort > 65535 {
		return nil, fmt.Errorf("dhcp: ports %d/%d are not valid UDP ports", opts.Port, opts.ProxyPort)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if m == nil {
		m = NewMetrics(prometheus.NewRegistry())
	}
	if events == nil {
		events = discard{}
	}
	log = log.With("component", "dhcp")
	s := &Server{
		opts:       opts,
		log:        log,
		debug:      log.Enabled(context.Background(), slog.LevelDebug),
		m:          m,
		events:     events,
		commit:     newCommitter(store, opts.BatchDelay, m, log),
		serverPort: uint16(opts.Port),
		clientPort: uint16(opts.Port + 1),
		now:        time.Now,
		updated:    make(chan struct{}, 1),
		pools:      map[string]*pool{},
		listeners:  map[string]*listener{},
		sem:        make(chan struct{}, maxInFlight),
		ready:      make(chan struct{}),
		macLimit:   ratelimit.New(opts.MACRate, opts.MACBurst, opts.MACLimiters),
		poolWatch:  &poolWatch{log: log, events: events, level: map[string]int{}},
	}
	if opts.Port == 67 {
		s.clientPort = 68
	}
	s.Update(cfg)
	now := s.now()
	for _, l := range known {
		s.pool(l.Subnet).load(l, now)
	}
	return s, nil
}

type discard struct{}

func (discard) Record(Event) {}

// Update swaps the config atomically: requests already being handled
// finish with the old one, the next ones see the new one. Leases are
// kept; addresses that the new config no longer allows are not renewed.
func (s *Server) Update(cfg Config) {
	s.updateMu.Lock()
	defer s.updateMu.Unlock()
	c, problems := compile(cfg)
	for _, p := range problems {
		s.log.Warn("config: not served", "err", p)
	}
	s.installGeometries(c)
	for _, sn := range c.subnets {
		sn.pool = s.pool(sn.Name) // before publishing: requests read it without a lock
	}
	s.cfg.Store(c)
	select {
	case s.updated <- struct{}{}:
	default:
	}
}

// installGeometries gives every pool its subnet's shape, with this
// host's own addresses excluded. updateMu is held.
func (s *Server) installGeometries(c *config) {
	s.poolsMu.Lock()
	defer s.poolsMu.Unlock()
	served := map[string]bool{}
	for _, sn := range c.subnets {
		served[sn.Name] = true
		p := s.pools[sn.Name]
		if p == nil {
			p = newPool(sn.Name, s.opts.OfferHold, s.opts.DeclineHold)
			s.pools[sn.Name] = p
		}
		g := *sn.geo
		g.locals = s.locals
		p.setGeometry(&g)
	}
	for name, p := range s.pools {
		if !served[name] {
			p.setGeometry(nil)
		}
	}
}

// setLocalAddrs tells the allocator this host's own addresses, which it
// never hands out.
func (s *Server) setLocalAddrs(addrs []netip.Addr) {
	m := make(map[ip4]bool, len(addrs))
	for _, a := range addrs {
		if a.Is4() {
			m[toIP4(a)] = true
		}
	}
	s.updateMu.Lock()
	defer s.updateMu.Unlock()
	if maps.Equal(m, s.locals) {
		return
	}
	s.locals = m
	if c := s.cfg.Load(); c != nil {
		s.installGeometries(c)
	}
}

// pool returns the pool of a subnet, creating it (for leases of subnets
// not served now, kept in case they come back).
func (s *Server) pool(name string) *pool {
	s.poolsMu.Lock()
	defer s.poolsMu.Unlock()
	p := s.pools[name]
	if p == nil {
		p = newPool(name, s.opts.OfferHold, s.opts.DeclineHold)
		s.pools[name] = p
	}
	return p
}

func (s *Server) allPools() []*pool {
	s.poolsMu.Lock()
	defer s.poolsMu.Unlock()
	ps := make([]*pool, 0, len(s.pools))
	for _, p := range s.pools {
		ps = append(ps, p)
	}
	return ps
}

func (s *Server) poolStats() []poolStat {
	now := s.now()
	var out []poolStat
	for _, p := range s.allPools() {
		if l, f, size, ok := p.stats(now); ok {
			out = append(out, poolStat{subnet: p.name, leases: l, free: f, size: size})
		}
	}
	slices.SortFunc(out, func(a, b poolStat) int { return cmp.Compare(a.subnet, b.subnet) })
	return out
}

// Run binds the interfaces and serves until ctx ends. It returns an
// error wrapping ErrNotLeader when the store says another agent leads,
// and an error when the first binding of the interfaces fails.
func (s *Server) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("dhcp: server already running")
	}
	ctx, cancel := context.WithCancel(ctx)
	commitDone := make(chan struct{})
	go func() {
		defer close(commitDone)
		s.commit.run(ctx)
	}()
	stats := s.poolStats
	s.m.pools.source.Store(&stats)
	defer func() {
		cancel()
		s.closeListeners()
		s.wg.Wait()
		<-commitDone
		s.m.pools.source.CompareAndSwap(&stats, nil)
	}()

	if err := s.refresh(ctx, true); err != nil {
		return fmt.Errorf("dhcp: %w", err)
	}
	close(s.ready)
	tick := time.NewTicker(refreshEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-s.commit.fatal:
			s.stopped.Store(true)
			s.log.Error("stopping: another agent leads the rack", "err", err)
			return fmt.Errorf("dhcp: %w", err)
		case <-s.updated:
			if err := s.refresh(ctx, false); err != nil {
				s.log.Warn("interfaces", "err", err)
			}
		case <-tick.C:
			if err := s.refresh(ctx, false); err != nil {
				s.log.Warn("interfaces", "err", err)
			}
			now := s.now()
			for _, p := range s.allPools() {
				p.sweep(now)
			}
			s.checkPools()
		}
	}
}

// checkPools warns about dynamic ranges nearly or fully used.
func (s *Server) checkPools() {
	now := s.now()
	for _, st := range s.poolStats() {
		s.poolWatch.check(st.subnet, st.free, st.size, now)
	}
}
