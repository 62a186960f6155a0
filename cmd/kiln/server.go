package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kilnhq/kiln/agents/rack"
	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/etcd"
	"github.com/kilnhq/kiln/reconciler"
	"github.com/kilnhq/kiln/spec/agentapi"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
)

func defaultDataDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "kiln")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "kiln")
	}
	return "kiln-data"
}

func runServer(ctx context.Context, args []string, out, errOut io.Writer) int {
	fs := newFlags("server", "[flags]", errOut)
	var (
		cf          clientFlags
		source      = fs.String("source", "", "inventory folder to watch (e.g. examples/lab)")
		gitURL      = fs.String("git", "", "git repository to follow: a local path or URL (instead of --source)")
		gitBranch   = fs.String("git-branch", "main", "branch to follow")
		gitPath     = fs.String("git-path", "", "folder inside the repository holding the inventory")
		gitInterval = fs.Duration("git-interval", 30*time.Second, "how often to poll the repository")
		dataDir     = fs.String("data-dir", defaultDataDir(), "where embedded etcd and the git cache live")
		clientURL   = fs.String("etcd-listen-client", "http://127.0.0.1:2379", "embedded etcd: client URL")
		peerURL     = fs.String("etcd-listen-peer", "http://127.0.0.1:2380", "embedded etcd: peer URL")
		embedded    = fs.Bool("embedded-etcd", true, "run etcd in-process; false uses --etcd-endpoints")
		srvCert     = fs.String("etcd-server-cert", "", "embedded etcd: server certificate; with --etcd-server-key and --etcd-server-ca it serves TLS and requires client certificates")
		srvKey      = fs.String("etcd-server-key", "", "embedded etcd: server key")
		srvCA       = fs.String("etcd-server-ca", "", "embedded etcd: CA that signs client and peer certificates")
		insecure    = fs.Bool("insecure-etcd", false, "embedded etcd: allow a non-loopback URL without TLS (anyone on that network can read every secret; logged as a warning at start and hourly)")
		listen      = fs.String("listen", "127.0.0.1:9420", "HTTP address for /metrics, /healthz and /readyz (the sync trigger is the API's)")
		apiAddr     = fs.String("api", "127.0.0.1:9443", "address of the region API and web view (docs/api.md); plain HTTP only on a loopback address, TLS with --api-cert and --api-key; empty: none")
		apiCert     = fs.String("api-cert", "", "the API's TLS certificate (PEM; kiln certs issue)")
		apiKey      = fs.String("api-key", "", "the API's TLS key (PEM)")
		logLevel    = fs.String("log-level", "info", "debug, info, warn or error")
		logFormat   = fs.String("log-format", "text", "text or json")
		rf          rackFlags
		region      regionFlags
	)
	cf.register(fs)
	region.register(fs)
	rf.register(fs) // --rack NAME also runs that rack's agent in-process
	if _, code, ok := parse(fs, args); !ok {
		return code
	}
	log, err := newLogger(errOut, *logLevel, *logFormat)
	if err != nil {
		fmt.Fprintln(errOut, "kiln server:", err)
		return exitUsage
	}
	if (*source == "") == (*gitURL == "") {
		fmt.Fprintln(errOut, "kiln server: give exactly one of --source DIR or --git URL")
		return exitUsage
	}
	regionCfg, err := region.config()
	if err == nil {
		err = checkAPIFlags(*apiAddr, *apiCert, *apiKey)
	}
	if err != nil {
		fmt.Fprintln(errOut, "kiln server:", err)
		return exitUsage
	}
	if err := serve(ctx, log, serverConfig{
		clientFlags: cf, source: *source, gitURL: *gitURL, gitBranch: *gitBranch, gitPath: *gitPath,
		gitInterval: *gitInterval, dataDir: *dataDir, clientURL: *clientURL, peerURL: *peerURL,
		embedded: *embedded, srvCert: *srvCert, srvKey: *srvKey, srvCA: *srvCA, insecureEtcd: *insecure, listen: *listen, rack: rf, region: regionCfg,
		api: *apiAddr, apiCert: *apiCert, apiKey: *apiKey,
	}); err != nil {
		log.Error("server stopped", "err", err)
		return exitFail
	}
	return exitOK
}

type serverConfig struct {
	clientFlags
	source, gitURL, gitBranch, gitPath string
	gitInterval                        time.Duration
	dataDir, clientURL, peerURL        string
	embedded                           bool
	srvCert, srvKey, srvCA             string
	insecureEtcd                       bool
	listen                             string
	api, apiCert, apiKey               string
	rack                               rackFlags
	region                             reconciler.Config
}

// timedPhases are the phases with a timeout flag.
var timedPhases = []string{reconciler.PhaseCommissioning, reconciler.PhaseDeploying, reconciler.PhaseReleasing, reconciler.PhaseErasing}

// regionFlags configure the region reconciler.
type regionFlags struct {
	id                  string
	ttl                 time.Duration
	workers             int
	timeouts            [4]time.Duration // by timedPhases
	powerTimeout        time.Duration
	osReportTimeout     time.Duration
	powerDriftGrace     time.Duration
	fastTrack           bool
	fastTrackWindow     time.Duration
	attempts            int
	backoff, maxBackoff time.Duration
}

func (r *regionFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&r.id, "region-id", "", "this server's name in the region election (default hostname-pid)")
	fs.DurationVar(&r.ttl, "region-ttl", 2*time.Second, "region election session TTL: a dead leader is replaced within about this long")
	fs.IntVar(&r.workers, "workers", 128, "machines reconciled in parallel")
	for i, p := range timedPhases {
		fs.DurationVar(&r.timeouts[i], "timeout-"+p, reconciler.DefaultTimeouts[p], "how long "+p+" may take before the machine fails")
	}
	fs.DurationVar(&r.powerTimeout, "power-timeout", 5*time.Minute, "how long a power task may wait for a rack agent")
	fs.DurationVar(&r.osReportTimeout, "os-report-timeout", reconciler.DefaultOSReportTimeout, "how long a deploy waits, after the disk boot, for the deployed OS to report in (images with confirm: none do not wait)")
	fs.DurationVar(&r.powerDriftGrace, "power-drift-grace", reconciler.DefaultPowerDriftGrace, "how long after Kiln's own power action an observed power state against the phase is not yet PowerDrift")
	fs.BoolVar(&r.fastTrack, "fast-track", true, "deploy a machine whose state is deployed right after commissioning, by the still-running agent, without a second boot (false: power off and network-boot again)")
	fs.DurationVar(&r.fastTrackWindow, "fast-track-window", 0, "keep a machine that is not to be deployed powered on this long after commissioning, its agent waiting: a deploy committed meanwhile needs no second boot (0: power off at once; at most "+agentapi.MaxFastTrackWindow.String()+")")
	fs.IntVar(&r.attempts, "max-attempts", 3, "attempts of a failed phase before the machine waits for a person")
	fs.DurationVar(&r.backoff, "retry-backoff", time.Minute, "wait before retrying a failed phase; doubles per attempt")
	fs.DurationVar(&r.maxBackoff, "max-retry-backoff", 30*time.Minute, "longest wait between attempts")
}

func (r *regionFlags) config() (reconciler.Config, error) {
	t := map[string]time.Duration{}
	for i, p := range timedPhases {
		if r.timeouts[i] <= 0 {
			return reconciler.Config{}, fmt.Errorf("--timeout-%s must be positive, not %s", p, r.timeouts[i])
		}
		t[p] = r.timeouts[i]
	}
	switch {
	case r.workers < 1:
		return reconciler.Config{}, fmt.Errorf("--workers must be at least 1, not %d", r.workers)
	case r.attempts < 1:
		return reconciler.Config{}, fmt.Errorf("--max-attempts must be at least 1, not %d", r.attempts)
	case r.ttl < time.Second:
		return reconciler.Config{}, fmt.Errorf("--region-ttl must be at least 1s (etcd's lease granularity), not %s", r.ttl)
	case r.osReportTimeout <= 0:
		return reconciler.Config{}, fmt.Errorf("--os-report-timeout must be positive, not %s", r.osReportTimeout)
	case r.powerDriftGrace <= 0:
		return reconciler.Config{}, fmt.Errorf("--power-drift-grace must be positive, not %s", r.powerDriftGrace)
	case r.fastTrackWindow < 0 || r.fastTrackWindow > agentapi.MaxFastTrackWindow:
		return reconciler.Config{}, fmt.Errorf("--fast-track-window must be from 0 to %s (the agent waits no longer), not %s", agentapi.MaxFastTrackWindow, r.fastTrackWindow)
	case r.fastTrackWindow > 0 && !r.fastTrack:
		return reconciler.Config{}, fmt.Errorf("--fast-track-window %s needs fast track: drop --fast-track=false", r.fastTrackWindow)
	case r.powerTimeout <= 0 || r.backoff <= 0 || r.maxBackoff < r.backoff:
		return reconciler.Config{}, fmt.Errorf("--power-timeout and --retry-backoff must be positive and --max-retry-backoff at least --retry-backoff")
	}
	return reconciler.Config{ID: r.id, TTL: r.ttl, Workers: r.workers, Policy: reconciler.Policy{
		Timeouts: t, PowerTimeout: r.powerTimeout, MaxAttempts: r.attempts, RetryBackoff: r.backoff, MaxRetryBackoff: r.maxBackoff,
		OSReportTimeout: r.osReportTimeout, PowerDriftGrace: r.powerDriftGrace, NoFastTrack: !r.fastTrack,
		FastTrackWindow: r.fastTrackWindow}}, nil
}

// serve runs a region server until ctx ends, then drains: the components
// stop (each bounded, each logging "<component> stopped"), then the etcd
// client closes, then embedded etcd stops, with no client stream left to
// wait for.
func serve(ctx context.Context, log *slog.Logger, c serverConfig) error {
	start := time.Now()
	reg := newRegistry()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	ecfg := c.config()
	if c.embedded {
		e, err := c.startEmbedded(ctx, log)
		if err != nil {
			return err
		}
		stopEtcd := runEmbedded(g, gctx, e, log)
		defer stopEtcd()
		// The server's own client keeps its credentials (--etcd-cert,
		// --etcd-user…): with auth on, it is the kiln-region user.
		ecfg.Endpoints = []string{e.URL}
		if ecfg.CAFile == "" {
			ecfg.CAFile = c.srvCA // the CA that signed the server's certificate
		}
	}
	ecfg.DialOptions = etcd.Instrument(reg)
	cli, err := etcd.Connect(ecfg)
	if err != nil {
		return err
	}
	defer func() {
		cli.Close()
		log.Info("etcd client closed")
	}()
	store := inventory.NewStore(cli, c.prefix, log)
	src, err := c.startComponents(gctx, g, store, reg, log)
	if err == nil {
		err = serveHTTP(gctx, g, c.listen, reg, routes(store), log)
	}
	if err == nil && c.api != "" {
		err = c.serveAPI(gctx, g, store, src, log)
	}
	if err != nil {
		cancel() // stop what started
		g.Wait()
		return err
	}
	log.Info("kiln server running", "version", version, "http", c.listen, "etcd", strings.Join(ecfg.Endpoints, ","), "source", src.Info().Location)
	err = g.Wait()
	log.Info("kiln server components stopped", "uptime", time.Since(start).Round(time.Millisecond).String())
	return err
}

// startEmbedded starts the embedded etcd of --embedded-etcd.
func (c serverConfig) startEmbedded(ctx context.Context, log *slog.Logger) (*etcd.Embedded, error) {
	return etcd.StartEmbedded(ctx, etcd.Config{DataDir: filepath.Join(c.dataDir, "etcd"), ClientURL: c.clientURL, PeerURL: c.peerURL,
		ServerCertFile: c.srvCert, ServerKeyFile: c.srvKey, ServerCAFile: c.srvCA, InsecureNetwork: c.insecureEtcd}, log)
}

// runEmbedded runs e until the returned stop is called, which the server
// does after its etcd client closed: stopping etcd while a client still
// holds watch streams waits out etcd's request timeout (about 7s). Its
// death while running ends g.
func runEmbedded(g *errgroup.Group, ctx context.Context, e *etcd.Embedded, log *slog.Logger) (stop func()) {
	ectx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- e.Run(ectx) }()
	g.Go(func() error {
		select {
		case err := <-done:
			done <- err // for stop
			return err
		case <-ctx.Done():
			return nil
		}
	})
	return func() {
		cancel()
		<-done
		log.Info("embedded etcd stopped")
	}
}

// startComponents starts, in g, the source syncer (through the region
// leader), the region reconciler and, with --rack, a rack agent.
func (c serverConfig) startComponents(ctx context.Context, g *errgroup.Group, store *inventory.Store, reg *prometheus.Registry, log *slog.Logger) (source, error) {
	var src source
	if c.source != "" {
		src.Source = &inventory.Dir{Name: "default", Path: c.source, Log: log}
	} else {
		gs := inventory.NewGit("default", c.gitURL, c.gitBranch, log)
		gs.Path, gs.Interval = c.gitPath, c.gitInterval
		gs.CacheDir = filepath.Join(c.dataDir, "git")
		gs.Username, gs.Password = os.Getenv("KILN_GIT_USERNAME"), os.Getenv("KILN_GIT_PASSWORD")
		src.Source, src.sync = gs, gs.Sync
	}
	// Only the region leader applies the source and reconciles; every
	// server answers reads.
	syncer := inventory.NewSyncer(src, store, inventory.NewSyncMetrics(reg), log)
	region := reconciler.New(c.region, store, reg, log, syncer.Run)
	goLogged(g, log, "region", func() error { return region.Run(ctx) })
	if src.sync != nil {
		// "Poll now", asked through the API of any server: the leader's.
		goLogged(g, log, "sync requests", func() error {
			store.FollowSyncRequests(ctx, "default", func(r inventory.SyncRequest) {
				if region.Leading() {
					log.Info("source sync requested", "by", r.By)
					src.sync()
				}
			})
			return nil
		})
	}
	if c.rack.rack != "" {
		rc, err := c.rack.config()
		if err != nil {
			return src, err
		}
		agent := rack.New(rc, store, reg, log)
		goLogged(g, log, "rack agent", func() error { return agent.Run(ctx) })
	}
	return src, nil
}

// source is the server's inventory source; sync, when set, asks it to
// poll now (git).
type source struct {
	inventory.Source
	sync func()
}

// routes are the server's routes beside /metrics and /healthz.
func routes(store *inventory.Store) func(*http.ServeMux) {
	return func(mux *http.ServeMux) {
		mux.HandleFunc("GET /readyz", readyz(func(ctx context.Context) error {
			// A key the region role may read: with auth on, "health" is not.
			if _, err := store.Client().Get(ctx, store.Keys().DesiredPointer(), clientv3.WithCountOnly()); err != nil {
				return fmt.Errorf("etcd: %w", err)
			}
			return nil
		}))
	}
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: use text or json", format)
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
