package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kilnhq/kiln/agents/rack"
	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/etcd"
	"github.com/kilnhq/kiln/netboot/boot"
	"github.com/kilnhq/kiln/netboot/cache"
	"github.com/kilnhq/kiln/netboot/dhcp"
	"github.com/kilnhq/kiln/netboot/httpsrv"
	"github.com/kilnhq/kiln/netboot/tftp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
)

// rackFlags configure a rack agent, in `kiln rack` and `kiln server --rack`.
type rackFlags struct {
	rack, id, interfaces string
	ttl                  time.Duration
	scriptURL, httpBoot  string
	tftpServer           string
	biosFile, efiFile    string
	dhcpPort, proxyPort  int
	httpAddr, tftpAddr   string
	tftpRoot, bootURL    string
	ipxeDir              string
	cacheDir, cacheSeed  string
	httpsAddr, agentURL  string
	tlsCert, tlsKey      string
	maxDiscovered        int
	discoveredTTL        time.Duration
	powerPoll            time.Duration
}

func (r *rackFlags) register(fs interface {
	StringVar(*string, string, string, string)
	DurationVar(*time.Duration, string, time.Duration, string)
	IntVar(*int, string, int, string)
}) {
	fs.StringVar(&r.rack, "rack", "", "the rack this agent serves")
	fs.StringVar(&r.id, "agent-id", "", "this agent's name in the election (default hostname-pid)")
	fs.StringVar(&r.interfaces, "interfaces", "", "interfaces to serve DHCP on, comma-separated (default: those with an address in one of the rack's subnets)")
	fs.DurationVar(&r.ttl, "leader-ttl", 2*time.Second, "election session TTL: a dead leader is replaced within about this long")
	fs.StringVar(&r.scriptURL, "script-url", "", `iPXE script URL for iPXE clients (default "http://{server}:8080/boot/{mac}/script.ipxe")`)
	fs.StringVar(&r.httpBoot, "http-boot-url", "", `boot file URL for UEFI HTTP boot clients (default "http://{server}:8080/ipxe/ipxe.efi")`)
	fs.StringVar(&r.tftpServer, "tftp-server", "", "next-server for TFTP boot (default: the serving address)")
	fs.StringVar(&r.biosFile, "bios-file", "", "TFTP boot file for BIOS PXE (default undionly.kpxe)")
	fs.StringVar(&r.efiFile, "efi-file", "", "TFTP boot file for UEFI x64 PXE (default ipxe.efi)")
	fs.IntVar(&r.dhcpPort, "dhcp-port", 67, "DHCP server port")
	fs.IntVar(&r.proxyPort, "proxy-port", 4011, "proxyDHCP (PXE boot server) port")
	fs.StringVar(&r.httpAddr, "http", "", `HTTP boot server address (iPXE scripts, metadata, agent API, images), e.g. ":8080"; empty: off`)
	fs.StringVar(&r.tftpAddr, "tftp", "", `TFTP address for the iPXE binaries, e.g. ":69"; empty: off`)
	fs.StringVar(&r.tftpRoot, "tftp-root", "", "folder TFTP serves, read-only, links out of it refused (default: a folder under --cache-dir, or a temporary one, holding the binaries of --ipxe-dir)")
	fs.StringVar(&r.ipxeDir, "ipxe-dir", "/usr/lib/ipxe", "the iPXE binaries (Debian's ipxe package) copied into the TFTP root at start; empty: serve --tftp-root as it is")
	fs.StringVar(&r.bootURL, "boot-url", "", "the HTTP boot server's URL as machines reach it (default: from each request's Host)")
	fs.StringVar(&r.cacheDir, "cache-dir", "", "the rack's image cache (content-addressed); empty: no image serving")
	fs.StringVar(&r.cacheSeed, "cache-seed", "", "folders to seed the image cache from, comma-separated (offline sites)")
	fs.StringVar(&r.httpsAddr, "https", "", `HTTPS address serving the HTTP boot server's routes for the machine agent and the deployed OS, e.g. ":8443" (needs --http, --tls-cert, --tls-key); empty: off`)
	fs.StringVar(&r.tlsCert, "tls-cert", "", "the rack's certificate (PEM) for --https, e.g. from kiln certs issue; read again when it changes")
	fs.StringVar(&r.tlsKey, "tls-key", "", "the key of --tls-cert (PEM)")
	fs.IntVar(&r.maxDiscovered, "max-discovered", 1024, "unknown MACs this rack records at once; beyond it new ones are not recorded (a warning says so)")
	fs.DurationVar(&r.discoveredTTL, "discovered-ttl", 24*time.Hour, "how long an unknown MAC's keys (record, timeline, token, report) outlive its last boot")
	fs.DurationVar(&r.powerPoll, "power-poll-interval", rack.DefaultPowerPollInterval, "how often (about, jittered ±20%) the leader reads each machine's power state through its BMC, for the region's PowerDrift condition; 0: off")
	fs.StringVar(&r.agentURL, "agent-url", "", "the HTTPS listener's URL as machines reach it, e.g. https://10.42.0.1:8443 (default: --boot-url's host with --https's port); must match a name in the certificate")
}

func (r *rackFlags) config() (rack.Config, error) {
	if r.maxDiscovered < 0 || r.discoveredTTL < 0 || r.discoveredTTL > 0 && r.discoveredTTL < time.Minute {
		return rack.Config{}, fmt.Errorf("--max-discovered must not be negative and --discovered-ttl must be at least 1m (got %d and %s)", r.maxDiscovered, r.discoveredTTL)
	}
	if r.powerPoll < 0 || r.powerPoll > 0 && r.powerPoll < time.Second {
		return rack.Config{}, fmt.Errorf("--power-poll-interval must be 0 (off) or at least 1s (got %s)", r.powerPoll)
	}
	c := rack.Config{Rack: r.rack, ID: r.id, TTL: r.ttl, MaxDiscovered: r.maxDiscovered, DiscoveredTTL: r.discoveredTTL,
		Boot:     dhcp.BootConfig{ScriptURL: r.scriptURL, HTTPBootURL: r.httpBoot, BIOSFile: r.biosFile, EFIFile: r.efiFile},
		DHCP:     dhcp.Options{Interfaces: splitList(r.interfaces), Port: r.dhcpPort, ProxyPort: r.proxyPort},
		HTTPAddr: r.httpAddr, TFTPAddr: r.tftpAddr,
		TFTP:     tftp.Options{Root: r.tftpRoot},
		IPXEDir:  r.ipxeDir,
		BootHTTP: boot.Options{BaseURL: r.bootURL},
		Cache:    cache.Options{Dir: r.cacheDir, SeedDirs: splitList(r.cacheSeed)}}
	c.PowerPollInterval = r.powerPoll
	c.HTTPSAddr, c.TLSCert, c.TLSKey, c.AgentURL = r.httpsAddr, r.tlsCert, r.tlsKey, r.agentURL
	agentURL, err := c.TLSAgentURL()
	if err != nil {
		return c, err
	}
	// The boot server tells machines this URL (kiln.url, task and
	// metadata URLs); iPXE's own fetches stay on --boot-url.
	c.AgentURL, c.BootHTTP.AgentURL = agentURL, agentURL
	if err := c.CheckTLS(); err != nil {
		return c, err
	}
	if c.TFTPAddr != "" && c.TFTP.Root == "" {
		switch {
		case r.cacheDir != "":
			c.TFTP.Root = filepath.Join(r.cacheDir, "tftp")
		default:
			dir, err := os.MkdirTemp("", "kiln-tftp-")
			if err != nil {
				return c, err
			}
			c.TFTP.Root = dir
		}
	} else if r.tftpRoot != "" {
		c.IPXEDir = "" // an explicit root is served as it is
	}
	if r.tftpServer != "" {
		a, err := netip.ParseAddr(r.tftpServer)
		if err != nil {
			return c, fmt.Errorf("--tftp-server %q: %w", r.tftpServer, err)
		}
		c.Boot.TFTPServer = a
	}
	return c, nil
}

func runRack(ctx context.Context, args []string, out, errOut io.Writer) int {
	fs := newFlags("rack", "--rack NAME [flags]", errOut)
	var (
		cf        clientFlags
		rf        rackFlags
		listen    = fs.String("listen", "127.0.0.1:9421", "HTTP address for /metrics, /healthz and /readyz")
		logLevel  = fs.String("log-level", "info", "debug, info, warn or error")
		logFormat = fs.String("log-format", "text", "text or json")
	)
	cf.register(fs)
	rf.register(fs)
	if _, code, ok := parse(fs, args); !ok {
		return code
	}
	log, err := newLogger(errOut, *logLevel, *logFormat)
	if err != nil {
		fmt.Fprintln(errOut, "kiln rack:", err)
		return exitUsage
	}
	if rf.rack == "" {
		fmt.Fprintln(errOut, "kiln rack: --rack is required")
		return exitUsage
	}
	cfg, err := rf.config()
	if err != nil {
		fmt.Fprintln(errOut, "kiln rack:", err)
		return exitUsage
	}
	reg := newRegistry()
	ecfg := cf.config()
	ecfg.DialOptions = etcd.Instrument(reg)
	cli, err := etcd.Connect(ecfg)
	if err != nil {
		fmt.Fprintln(errOut, "kiln rack:", err)
		return exitFail
	}
	defer cli.Close()
	agent := rack.New(cfg, inventory.NewStore(cli, cf.prefix, log), reg, log)

	g, ctx := errgroup.WithContext(ctx)
	goLogged(g, log, "rack agent", func() error { return agent.Run(ctx) })
	if err := serveHTTP(ctx, g, *listen, reg, func(mux *http.ServeMux) {
		mux.HandleFunc("GET /readyz", readyz(func(context.Context) error { return agent.Ready() }))
	}, log); err != nil {
		log.Error("rack agent stopped", "err", err)
		return exitFail
	}
	log.Info("kiln rack agent running", "version", version, "etcd", cf.endpoints, "http", *listen)
	if err := g.Wait(); err != nil {
		log.Error("rack agent stopped", "err", err)
		return exitFail
	}
	return exitOK
}

// serveHTTP serves /metrics, /healthz and extra routes on addr within g,
// shutting down when ctx ends (within drainTimeout; "http stopped").
func serveHTTP(ctx context.Context, g *errgroup.Group, addr string, reg *prometheus.Registry, routes func(*http.ServeMux), log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	if routes != nil {
		routes(mux)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", addr, err)
	}
	// Metrics and admin routes: a small connection cap is plenty.
	srv, ln := httpsrv.New(mux, ln, httpsrv.Options{MaxConns: 64})
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	goLogged(g, log, "http", func() error {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), drainTimeout)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			srv.Close()
		}
		return nil
	})
	return nil
}

// readyz answers 200 "ok" while check passes, else 503 with its error on
// one line.
func readyz(check func(context.Context) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := check(ctx); err != nil {
			http.Error(w, strings.ReplaceAll(err.Error(), "\n", " "), http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	}
}
