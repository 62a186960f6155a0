// Package rack is the rack agent: one or more per rack, one elected leader
// that runs the rack's network services (DHCP, TFTP, the HTTP and HTTPS
// boot server, the image cache) and its power tasks. Standbys keep a warm
// cache of the rack's desired state
// and leases, so that they take over within a session TTL of the leader's
// death. The leader's writes are fenced by its election key.
package rack

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/netboot/boot"
	"github.com/kilnhq/kiln/netboot/cache"
	"github.com/kilnhq/kiln/netboot/dhcp"
	"github.com/kilnhq/kiln/netboot/httpsrv"
	"github.com/kilnhq/kiln/netboot/tftp"
	"github.com/kilnhq/kiln/power"
	"github.com/kilnhq/kiln/spec"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
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
	ready chan struct{} // closed when the first view is known
	// changed is closed (and replaced) each time the view changes.
	changed chan struct{}
	leases  map[string]dhcp.Lease
	server  *dhcp.Server // while leading
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
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("cannot read the desired state; serving from cache", "err", err)
			}
			sleep(ctx, backoff(attempt))
			continue
		}
		attempt = 0
		a.loadSecrets(ctx, snap.Inventory)
		a.setView(viewOf(a.cfg.Rack, snap.Inventory, a.cfg.Boot), snap.Inventory)
		a.stage(ctx, snap.Inventory)
		// Wait for the next change of the desired state, then read again.
		wctx, cancel := context.WithCancel(ctx)
		wch := a.store.WatchPrefix(wctx, a.store.Keys().Desired(), snap.Revision)
		for wr := range wch {
			if wr.Err() != nil || len(wr.Events) > 0 {
				break
			}
		}
		cancel()
		sleep(ctx, 50*time.Millisecond) // a revision arrives in a burst of events
	}
	return nil
}

// machineSoon returns the machine from the agent's copy of the inventory,
// waiting up to wait for a copy that has it: the region may ask for a
// machine just added to the source before this agent's watch brings it.
func (a *Agent) machineSoon(ctx context.Context, name string, wait time.Duration) (*spec.Machine, bool) {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		a.mu.Lock()
		m, ok := a.inv.Machines[name]
		changed := a.changed
		a.mu.Unlock()
		if ok {
			return m, true
		}
		select {
		case <-changed:
		case <-deadline.C:
			return nil, false
		case <-ctx.Done():
			return nil, false
		}
	}
}

func (a *Agent) setView(v dhcp.Config, inv *spec.Inventory) {
	byMAC := map[string]*spec.Machine{}
	for _, m := range inv.Machines {
		for _, i := range m.Spec.Interfaces {
			byMAC[strings.ToLower(i.MAC)] = m
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.view, a.inv, a.byMAC = v, inv, byMAC
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
			sleep(ctx, backoff(attempt))
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
	for attempt := 0; ctx.Err() == nil; attempt++ {
		err := a.term(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			a.log.Warn("leadership attempt ended", "err", err)
			sleep(ctx, backoff(attempt))
			continue
		}
		attempt = 0
	}
	return nil
}

// term is one campaign and, if won, one term of service.
func (a *Agent) term(ctx context.Context) error {
	ttl := max(int(a.cfg.TTL.Round(time.Second)/time.Second), 1)
	cli := a.store.Client()
	session, err := concurrency.NewSession(cli, concurrency.WithTTL(ttl), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("election session: %w", err)
	}
	defer session.Orphan() // Resign below deletes our key when we can reach etcd
	el := concurrency.NewElection(session, a.store.Keys().RackElection(a.cfg.Rack))
	if err := el.Campaign(ctx, a.cfg.ID); err != nil {
		session.Close()
		return fmt.Errorf("campaign: %w", err)
	}
	a.becomeLeader(true)
	defer a.becomeLeader(false)

	a.mu.Lock()
	view := a.view
	known := make([]dhcp.Lease, 0, len(a.leases))
	for _, l := range a.leases {
		known = append(known, l)
	}
	a.mu.Unlock()
	fence := inventory.Fence{Key: el.Key(), Rev: el.Rev()}
	store := &fencedLeases{rack: a.cfg.Rack, store: a.store, fence: fence}
	srv, err := dhcp.New(view, known, store, a.events, a.cfg.DHCP, a.dhcpM, a.log)
	if err != nil {
		a.resign(ctx, el, session)
		return fmt.Errorf("start DHCP: %w", err)
	}
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- srv.Run(sctx) }()
	bootDone, err := a.startBootServers(sctx)
	if err != nil {
		stop()
		<-done
		a.resign(ctx, el, session)
		return fmt.Errorf("start boot servers: %w", err)
	}
	defer func() { stop(); <-bootDone }()
	a.mu.Lock()
	a.server = srv
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		a.server = nil
		a.mu.Unlock()
	}()
	tr := &tasks{a: a, power: a.power, fence: fence, now: time.Now, catchUp: inventoryCatchUp,
		inflight: map[string]string{}, next: map[string]taskWrite{}}
	tasksDone := make(chan struct{})
	go func() {
		defer close(tasksDone)
		for attempt := 0; sctx.Err() == nil; attempt++ {
			if err := tr.run(sctx); err != nil && sctx.Err() == nil {
				a.log.Warn("power tasks interrupted; resuming", "err", err)
			}
			sleep(sctx, backoff(attempt))
		}
	}()
	defer func() { stop(); <-tasksDone }()
	a.log.Info("leading the rack: serving DHCP", "subnets", len(view.Subnets), "hosts", len(view.Hosts), "leases", len(known))

	select {
	case <-ctx.Done():
		stop()
		<-done
		a.resign(ctx, el, session)
		return nil
	case err := <-done:
		a.resign(ctx, el, session)
		return fmt.Errorf("DHCP server stopped: %w", err)
	case <-session.Done():
	}
	// The session is gone: etcd is unreachable, or our lease expired.
	// Keep answering known reservations (the server can't store anything
	// new) until we know who leads.
	a.log.Warn("lost the election session; serving known reservations until etcd answers")
	for {
		lctx, cancel := context.WithTimeout(ctx, time.Second)
		resp, err := cli.Get(lctx, a.store.Keys().RackElection(a.cfg.Rack), clientv3.WithFirstCreate()...)
		cancel()
		if err == nil {
			leader := ""
			if len(resp.Kvs) > 0 {
				leader = string(resp.Kvs[0].Value)
			}
			a.log.Info("etcd answers again; stepping down to campaign anew", "current_leader", leader)
			stop()
			<-done
			return nil
		}
		select {
		case <-ctx.Done():
			stop()
			<-done
			return nil
		case err := <-done:
			return fmt.Errorf("DHCP server stopped: %w", err)
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
}

func (a *Agent) resign(ctx context.Context, el *concurrency.Election, s *concurrency.Session) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := el.Resign(rctx); err != nil {
		a.log.Debug("resign", "err", err)
	}
	s.Close()
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

func backoff(attempt int) time.Duration {
	d := 200 * time.Millisecond << min(attempt, 5)
	return d/2 + rand.N(d/2)
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
