package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/kilnhq/kiln/agents/machine"
	"github.com/kilnhq/kiln/agents/machine/facts"
	"github.com/kilnhq/kiln/spec/agentapi"
)

// options are what the agent needs besides the kernel command line.
type options struct {
	network bool          // bring the network up with DHCP first
	netWait time.Duration // DHCP deadline
	roots   facts.Roots
	caPath  string // the rack's CA; a missing file means plain http
}

// run is the agent as a normal process: the kiln.* arguments come from
// -cmdline or /proc/cmdline. Exit codes: 0 success, 1 the task failed,
// 2 bad arguments.
func run(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("kiln-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cmdline := fs.String("cmdline", "", "kernel command line with the kiln.* arguments (default: /proc/cmdline)")
	network := fs.Bool("network", true, "bring the network up with DHCP before talking to the rack")
	caPath := fs.String("ca", machine.CAPath, "the rack's CA (PEM): when the file exists, the agent talks to the rack over https verified against it only, and refuses http")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stderr, "kiln-agent", version)
		return 0
	}
	if *cmdline == "" {
		b, err := os.ReadFile("/proc/cmdline")
		if err != nil {
			fmt.Fprintf(stderr, "kiln-agent: %v\n", err)
			return 2
		}
		*cmdline = string(b)
	}
	cfg, err := machine.ParseCmdline(*cmdline)
	if err != nil {
		fmt.Fprintf(stderr, "kiln-agent: %v\n", err)
		return 2
	}
	log := newLogger(stderr, cfg.Debug)
	opts := options{network: *network, netWait: 60 * time.Second, roots: facts.DefaultRoots, caPath: *caPath}
	if err := agentMain(ctx, cfg, opts, log, stderr); err != nil {
		return 1
	}
	return 0
}

func newLogger(w io.Writer, debug bool) *slog.Logger {
	level := slog.LevelInfo
	if debug {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// agentMain brings the network up and runs the agent. Its error has
// already been printed on the console.
func agentMain(ctx context.Context, cfg machine.Config, opts options, log *slog.Logger, console io.Writer) error {
	log = log.With("machine", cfg.Machine)
	log.Info("kiln-agent starting", "version", version, "config", cfg)
	// LLDP is heard from the agent's start (each link as soon as it is
	// up), while it gets its network and its task, so that switches
	// sending every 30 s are in the facts.
	lldp := facts.WatchLLDP(ctx, cfg.LLDPWait, log)
	defer lldp.Stop()
	if opts.network {
		if _, err := machine.BringUpNetwork(ctx, log, machine.NetworkOptions{Timeout: opts.netWait, LinksUp: lldp.Listen}); err != nil {
			// Nothing can be reported without a network: say it here.
			fmt.Fprintf(console, "kiln-agent: result failure: network: %v\n", err)
			return err
		}
	}
	if err := lldp.ListenUp(); err != nil {
		log.Warn("lldp: cannot listen", "err", err)
	}
	client, deployer, err := rackClients(cfg, opts.caPath, log)
	if err != nil {
		log.Error("cannot talk to the rack safely", "err", err)
		fmt.Fprintf(console, "kiln-agent: result failure: %v\n", err)
		return err
	}
	a := &machine.Agent{
		Client:     client,
		Deployer:   deployer,
		Eraser:     &machine.Eraser{Client: client, Log: log},
		Collectors: facts.Watching(opts.roots, lldp, log),
		Disks:      func() ([]agentapi.Disk, error) { return facts.Disks(opts.roots) },
		Arch:       runtime.GOARCH,
		Log:        log,
		Console:    console,
	}
	err = a.Run(ctx)
	if errors.Is(err, context.Canceled) {
		log.Warn("stopped")
	}
	return err
}

// rackClients are the agent API client and the image downloader: over
// https verified against the CA at caPath when that file exists (http
// refused), else plain http, which is logged as unauthenticated.
func rackClients(cfg machine.Config, caPath string, log *slog.Logger) (*machine.Client, *machine.Deployer, error) {
	var ca []byte
	if caPath != "" {
		var err error
		if ca, err = machine.LoadCA(caPath); err != nil {
			return nil, nil, err
		}
	}
	if ca == nil {
		log.Warn("no rack CA in this image: the channel to the rack is unauthenticated (anyone on the provisioning network can read the token and impersonate the rack)", "ca", caPath, "url", cfg.URL)
		client := machine.NewClient(cfg.URL, cfg.Machine, cfg.Token, &http.Client{Timeout: time.Minute}, machine.DefaultRetry, log)
		return client, &machine.Deployer{Client: client, Log: log,
			HTTP: &http.Client{Transport: &http.Transport{ResponseHeaderTimeout: time.Minute}}}, nil
	}
	client, err := machine.NewTLSClient(cfg.URL, cfg.Machine, cfg.Token, ca, machine.DefaultRetry, log)
	if err != nil {
		return nil, nil, err
	}
	// Images may come over http (their sha256 comes from the task, over
	// https); over https they are verified against the same CA.
	images, err := machine.TLSHTTPClient(ca, 0, time.Minute)
	if err != nil {
		return nil, nil, err
	}
	log.Info("talking to the rack over https, verified against the image's CA", "ca", caPath, "url", cfg.URL)
	return client, &machine.Deployer{Client: client, HTTP: images, Log: log, CA: ca}, nil
}

// cmdlineHasDebug is for PID 1 before the arguments are checked.
func cmdlineHasDebug(cmdline string) bool {
	for _, f := range strings.Fields(cmdline) {
		if f == "kiln.debug=1" || f == "kiln.debug" {
			return true
		}
	}
	return false
}
