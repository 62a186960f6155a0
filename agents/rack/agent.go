package rack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/backoff"
	"github.com/kilnhq/kiln/inventory/election"
	"github.com/kilnhq/kiln/netboot/boot"
	"github.com/kilnhq/kiln/netboot/cache"
	"github.com/kilnhq/kiln/netboot/dhcp"
	"github.com/kilnhq/kiln/netboot/httpsrv"
	"github.com/kilnhq/kiln/netboot/tftp"
	"github.com/kilnhq/kiln/power"
	"github.com/kilnhq/kiln/spec"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
)

// Config configures an agent.
type Config struct {
	Rack string
	// ID names this agent in the election (default hostname-pid).
	ID string
	// TTL is the election session's TTL: a dead leader is replaced
	// within about this long (default 2s; etcd's minimum is about 1.5s).
	TTL  time.Duration
	Boot dhcp.BootConfig
	DHCP dhcp.Options

	// Boot servers, run by the leader beside DHCP. An empty HTTPAddr
	// turns the HTTP boot server (scripts, metadata, agent API, images)
	// off; an empty TFTPAddr turns TFTP off.
	HTTPAddr string // e.g. ":8080"
	TFTPAddr string // e.g. ":69"
	TFTP     tftp.Options
	// IPXEDir, when set, is copied into TFTP.Root at start (links
	// resolved): the distribution's iPXE binaries.
	IPXEDir  string
	BootHTTP boot.Options
	// Cache is the rack's image cache; an empty Dir turns it off.
	Cache cache.Options
	// Power is the execution policy of the region's power tasks.
	Power power.Policy
	// Powerer, when set, replaces the power executor (tests).
	Powerer Powerer
	// PowerPollInterval is how often, about (±20%), the leader reads
	// each of the rack's machines' power state (powerwatch.go); 0 turns
	// the power watch off.
	PowerPollInterval time.Duration

	// HTTPSAddr, when set (with HTTPAddr), serves the HTTP boot server's
	// routes over TLS too, for the machine agent and the deployed OS
	// (tls.go). TLSCert and TLSKey are PEM files, read again when they
	// change. AgentURL is that listener's URL as machines reach it, e.g.
	// https://10.42.0.1:8443 (see TLSAgentURL).
	HTTPSAddr       string
	TLSCert, TLSKey string
	AgentURL        string
	// HTTPLimits are the boot server's listener limits; zero values take
	// httpsrv's defaults (ReadHeaderTimeout 10s, IdleTimeout 60s,
	// MaxHeaderBytes 16 KiB, 1,024 connections).
	HTTPLimits httpsrv.Options
	// RequestTimeout bounds every boot-server request but /images/ and
	// /ipxe/ (default 2s): past it etcd look-ups fail and the request is
	// answered 503 with Retry-After.
	RequestTimeout time.Duration
	// DiscoveredTTL is how long the keys of an unknown MAC (its
	// discovered record, timeline, boot token and report) outlive its
	// last boot: they share one etcd lease of this TTL, refreshed while
	// the MAC keeps booting. Default 24h.
	DiscoveredTTL time.Duration
	// MaxDiscovered caps the unknown MACs the rack records at once
	// (default 1024); beyond it new MACs are not recorded (DHCP may
	// still answer them) and a warning is raised.
	MaxDiscovered int
}

// etcdRetry spaces the agent's retries against etcd.
var etcdRetry = backoff.Policy{Base: 200 * time.Millisecond, Max: 6400 * time.Millisecond}

// Agent is a rack agent.
type Agent struct {
	cfg   Config
	store *inventory.Store
	log   *slog.Logger
	dhcpM *dhcp.Metrics
	tftpM *tftp.Metrics
	bootM *boot.Metrics
	cache *cache.Cache
	power Powerer
	exec  *power.Executor // closed when Run ends

	leaderGauge prometheus.Gauge
	transitions prometheus.Counter
	events      *eventLog
	discovered  *discoveredSet

	mu    sync.Mutex
	inv   *spec.Inventory
	byMAC map[string]*spec.Machine
	view  dhcp.Config
	// viewRev is the etcd revision the view is known current at: its
	// snapshot's, or a later one a watch progress report vouched for.
	viewRev int64
	ready   chan struct{} // closed when the first view is known
	// changed is closed (and replaced) each time the view changes.
	changed chan struct{}
	leases  map[string]dhcp.Lease
	server  *dhcp.Server // while leading
	leading bool
	// stale is why the view may be behind etcd: the last read or watch
	// of the desired state failed (nil while it is followed).
	stale error

	// Test hooks: onRole hears each change of role; listen opens the
	// boot servers' TCP listeners (default net.Listen).
	onRole func(leading bool)
	listen func(network, addr string) (net.Listener, error)
}

// New returns an agent; its metrics go to reg.
func New(cfg Config, store *inventory.Store, reg prometheus.Registerer, log *slog.Logger) *Agent {
	if cfg.TTL == 0 {
		cfg.TTL = 2 * time.Second
	}
	if cfg.ID == "" {
		host, _ := os.Hostname()
		cfg.ID = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	log = log.With("rack", cfg.Rack, "agent", cfg.ID)
	a := &Agent{cfg: cfg, store: store, log: log, ready: make(chan struct{}), leases: map[string]dhcp.Lease{},
		dhcpM: dhcp.NewMetrics(reg), inv: spec.NewInventory(), byMAC: map[string]*spec.Machine{}, changed: make(chan struct{})}
	if cfg.TFTPAddr != "" {
		a.tftpM = tftp.NewMetrics(reg)
	}
	if cfg.HTTPAddr != "" {
		a.bootM = boot.NewMetrics(reg)
	}
	if cfg.Cache.Dir != "" {
		c, err := cache.New(cfg.Cache, cache.NewMetrics(reg), log.With("component", "cache"))
		if err != nil {
			log.Error("image cache unavailable; images will not be served", "dir", cfg.Cache.Dir, "err", err)
		} else {
			a.cache = c
		}
	}
	a.power = cfg.Powerer
	if a.power == nil {
		a.exec = power.NewExecutor(cfg.Power, power.NewMetrics(reg), log.With("component", "power"))
		a.power = a.exec
	}
	a.leaderGauge = prometheus.NewGauge(prometheus.GaugeOpts{Name: "kiln_rack_leader", Help: "1 while this agent leads its rack.",
		ConstLabels: prometheus.Labels{"rack": cfg.Rack}})
	a.transitions = prometheus.NewCounter(prometheus.CounterOpts{Name: "kiln_rack_leader_changes_total",
		Help: "Times this agent became or stopped being its rack's leader.", ConstLabels: prometheus.Labels{"rack": cfg.Rack}})
	dropped := prometheus.NewCounter(prometheus.CounterOpts{Name: "kiln_rack_events_dropped_total",
		Help: "Boot events dropped because etcd could not keep up.", ConstLabels: prometheus.Labels{"rack": cfg.Rack}})
	reg.MustRegister(a.leaderGauge, a.transitions, dropped)
	a.discovered = newDiscoveredSet(cfg.Rack, store, cfg.DiscoveredTTL, cfg.MaxDiscovered, reg, log)
	a.events = newEventLog(cfg.Rack, store, log, dropped, a.discovered)
	a.discovered.warn = a.events.warn
	return a
}

// Run follows the desired state and the leases, campaigns, and serves
// while leading, until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	if a.exec != nil {
		defer a.exec.Close()
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.followDesired(ctx) })
	g.Go(func() error { return a.followLeases(ctx) })
	g.Go(func() error { return a.events.Run(ctx) })
	g.Go(func() error { return a.lead(ctx) })
	return g.Wait()
}

// followDesired keeps the rack's view of the desired state current.
func (a *Agent) followDesired(ctx context.Context) error {
	for attempt := 0; ctx.Err() == nil; attempt++ {
		snap, err := a.store.Snapshot(ctx, spec.KindSubnet, spec.KindMachine, spec.KindImage)
		a.setStale(err)
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("cannot read the desired state; serving from cache", "err", err)
			}
			backoff.Sleep(ctx, etcdRetry.Delay(attempt))
			continue
		}
		attempt = 0
		a.loadSecrets(ctx, snap.Inventory)
		a.setView(viewOf(a.cfg.Rack, snap.Inventory, a.cfg.Boot), snap.Inventory, snap.Revision)
		a.stage(ctx, snap.Inventory)
		// Wait for the next change of the desired state, then read again.
		wctx, cancel := context.WithCancel(ctx)
		wch := a.store.WatchPrefix(wctx, a.store.Keys().Desired(), snap.Revision)
		for wr := range wch {
			if wr.Err() != nil {
				a.setStale(fmt.Errorf("watch the desired state: %w", wr.Err()))
			}
			if wr.Err() != nil || len(wr.Events) > 0 {
				break
			}
			if wr.IsProgressNotify() { // nothing desired changed up to here
				a.viewCurrentAt(wr.Header.Revision)
			}
		}
		cancel()
		backoff.Sleep(ctx, 50*time.Millisecond) // a revision arrives in a burst of events
	}
	return nil
}

func (a *Agent) setView(v dhcp.Config, inv *spec.Inventory, rev int64) {
	byMAC := map[string]*spec.Machine{}
	for _, m := range inv.Machines {
		for _, i := range m.Spec.Interfaces {
			byMAC[strings.ToLower(i.MAC)] = m
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.view, a.inv, a.byMAC, a.viewRev = v, inv, byMAC, rev
	close(a.changed)
	a.changed = make(chan struct{})
	select {
	case <-a.ready:
	default:
		close(a.ready)
		a.log.Info("rack view loaded", "subnets", len(v.Subnets), "hosts", len(v.Hosts))
	}
	if a.server != nil {
		a.server.Update(v)
	}
}

// followLeases keeps a warm copy of the leases, so a standby can take
// over with them at once.
func (a *Agent) followLeases(ctx context.Context) error {
	for attempt := 0; ctx.Err() == nil; attempt++ {
		fresh := map[string]dhcp.Lease{}
		prefix := a.store.Keys().Lease(a.cfg.Rack, "", "")
		rev, err := a.store.RangeAt(ctx, prefix, 0, func(k string, v []byte) error {
			var l dhcp.Lease
			if err := json.Unmarshal(v, &l); err != nil {
				a.log.Warn("ignoring an undecodable lease", "key", k, "err", err)
				return nil
			}
			fresh[k] = l
			return nil
		})
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("cannot read leases; keeping the cached ones", "err", err)
			}
			backoff.Sleep(ctx, etcdRetry.Delay(attempt))
			continue
		}
		attempt = 0
		a.mu.Lock()
		a.leases = fresh
		a.mu.Unlock()
		wctx, cancel := context.WithCancel(ctx)
		for wr := range a.store.WatchPrefix(wctx, prefix, rev) {
			if wr.Err() != nil {
				break
			}
			a.mu.Lock()
			for _, ev := range wr.Events {
				k := string(ev.Kv.Key)
				if ev.Type == clientv3.EventTypeDelete {
					delete(a.leases, k)
					continue
				}
				var l dhcp.Lease
				if json.Unmarshal(ev.Kv.Value, &l) == nil {
					a.leases[k] = l
				}
			}
			a.mu.Unlock()
		}
		cancel()
	}
	return nil
}

// lead campaigns for the rack and serves while leading.
func (a *Agent) lead(ctx context.Context) error {
	select {
	case <-a.ready:
	case <-ctx.Done():
		return nil
	}
	return election.Run(ctx, a.store.Client(), a.store.Keys().RackElection(a.cfg.Rack), a.cfg.ID,
		election.Options{TTL: a.cfg.TTL, Log: a.log}, func(lctx context.Context, t election.Term) error {
			return a.term(ctx, lctx, t)
		})
}

// term is one term of service: DHCP, the boot servers and the power
// tasks run until the term ends (lctx) or any of them stops, which ends
// the term so that a standby takes over. The servers run under ctx, not
// lctx: when the election is lost because etcd is away, DHCP keeps
// answering known reservations until etcd answers again (linger).
func (a *Agent) term(ctx, lctx context.Context, t election.Term) error {
	a.becomeLeader(true)
	defer a.becomeLeader(false)
	view, known := a.viewAndLeases()
	fence := t.Fence()
	srv, err := dhcp.New(view, known, &fencedLeases{rack: a.cfg.Rack, store: a.store, fence: fence}, a.events, a.cfg.DHCP, a.dhcpM, a.log)
	if err != nil {
		return fmt.Errorf("start DHCP: %w", err)
	}
	sctx, stop := context.WithCancel(ctx)
	c := newCrew(sctx, a.log)
	defer func() { stop(); c.wait() }()
	c.run("DHCP", srv.Run)
	if err := a.startBootServers(sctx, c); err != nil {
		return fmt.Errorf("start boot servers: %w", err)
	}
	a.setServer(srv)
	defer a.setServer(nil)
	c.run("power tasks", a.powerTasks(fence))
	if a.cfg.PowerPollInterval > 0 {
		c.run("power watch", a.powerWatch(fence))
	}
	a.log.Info("leading the rack: serving DHCP", "subnets", len(view.Subnets), "hosts", len(view.Hosts), "leases", len(known))

	select {
	case err := <-c.died:
		return err
	case <-lctx.Done():
	}
	if cause := context.Cause(lctx); ctx.Err() == nil && errors.Is(cause, election.ErrLost) {
		return a.linger(ctx, c.died, cause)
	}
	return nil
}

// viewAndLeases copies the current view and the known leases.
func (a *Agent) viewAndLeases() (dhcp.Config, []dhcp.Lease) {
	a.mu.Lock()
	defer a.mu.Unlock()
	known := make([]dhcp.Lease, 0, len(a.leases))
	for _, l := range a.leases {
		known = append(known, l)
	}
	return a.view, known
}

// setServer publishes the leader's DHCP server, so view changes reach it.
func (a *Agent) setServer(srv *dhcp.Server) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.server = srv
}

// powerTasks runs the region's power tasks for this term, resuming after
// an interruption, until ctx ends.
func (a *Agent) powerTasks(fence inventory.Fence) func(context.Context) error {
	tr := &tasks{a: a, power: a.power, fence: fence, now: time.Now, catchUp: inventoryCatchUp,
		inflight: map[string]string{}, next: map[string]taskWrite{}}
	return func(ctx context.Context) error {
		for attempt := 0; ctx.Err() == nil; attempt++ {
			if err := tr.run(ctx); err != nil && ctx.Err() == nil {
				a.log.Warn("power tasks interrupted; resuming", "err", err)
			}
			backoff.Sleep(ctx, etcdRetry.Delay(attempt))
		}
		return nil
	}
}

// linger follows a lost election: etcd is unreachable, or our key is
// gone. DHCP keeps answering known reservations (it can store nothing
// new) until etcd answers and the agent steps down to campaign anew.
func (a *Agent) linger(ctx context.Context, died <-chan error, cause error) error {
	a.log.Warn("lost the election session; serving known reservations until etcd answers", "reason", cause)
	for {
		gctx, cancel := context.WithTimeout(ctx, time.Second)
		resp, err := a.store.Client().Get(gctx, a.store.Keys().RackElection(a.cfg.Rack), clientv3.WithFirstCreate()...)
		cancel()
		if err == nil {
			leader := ""
			if len(resp.Kvs) > 0 {
				leader = string(resp.Kvs[0].Value)
			}
			a.log.Info("etcd answers again; stepping down to campaign anew", "current_leader", leader)
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-died:
			return err
		case <-time.After(time.Second):
		}
	}
}

func (a *Agent) becomeLeader(on bool) {
	v := 0.0
	if on {
		v = 1
		a.log.Info("became the rack leader")
	}
	a.leaderGauge.Set(v)
	a.transitions.Inc()
	a.mu.Lock()
	a.leading = on
	a.mu.Unlock()
	if a.onRole != nil {
		a.onRole(on)
	}
}

// fencedLeases writes leases only while our election key is the one that
// won: a deposed leader's writes fail with dhcp.ErrNotLeader.
type fencedLeases struct {
	rack  string
	store *inventory.Store
	fence inventory.Fence
}

func (f *fencedLeases) Save(ctx context.Context, leases []dhcp.Lease) error {
	cli := f.store.Client()
	for start := 0; start < len(leases); start += 120 {
		var ops []clientv3.Op
		for _, l := range leases[start:min(start+120, len(leases))] {
			b, err := json.Marshal(l)
			if err != nil {
				return err
			}
			ops = append(ops, clientv3.OpPut(f.store.Keys().Lease(f.rack, l.Subnet, l.IP.String()), string(b)))
		}
		resp, err := cli.Txn(ctx).If(f.fence.Held()).Then(ops...).Commit()
		if err != nil {
			return fmt.Errorf("save leases: %w", err)
		}
		if !resp.Succeeded {
			return fmt.Errorf("save leases: %w", dhcp.ErrNotLeader)
		}
	}
	return nil
}
