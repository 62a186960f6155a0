package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/etcd"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

// drainTimeout bounds each component's drain on shutdown, so that the
// whole process stops within about 2s of SIGTERM.
const drainTimeout = time.Second

// newRegistry is a metrics registry with the Go and process collectors.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// goLogged runs fn in g as the component name and logs "<name> stopped"
// when it returns (with its error, if any).
func goLogged(g *errgroup.Group, log *slog.Logger, name string, fn func() error) {
	g.Go(func() error {
		err := fn()
		if err != nil {
			log.Error(name+" stopped", "err", err)
		} else {
			log.Info(name + " stopped")
		}
		return err
	})
}

// Exit codes.
const (
	exitOK      = 0
	exitFail    = 1 // validation failed, differences found, command failed
	exitUsage   = 2
	exitTrouble = 2
)

type command struct {
	summary string
	run     func(ctx context.Context, args []string, out, errOut io.Writer) int
}

func commands() map[string]command {
	return map[string]command{
		"server":     {"run a region server: embedded etcd, inventory source, metrics", runServer},
		"validate":   {"validate an inventory folder; exit 1 on errors", runValidate},
		"etcd":       {"set up etcd access control: roles and users per component (kiln etcd init-roles)", runEtcd},
		"diff":       {"show what applying a folder would add, change and remove", runDiff},
		"export":     {"print discovered machines as Machine documents to commit", runExport},
		"image":      {"build the ephemeral boot image (kiln image build-ephemeral)", runImage},
		"certs":      {"make a lab CA and issue TLS certificates (kiln certs init, issue)", runCerts},
		"get":        {"list machines, racks, subnets, images, profiles or the source", runGet},
		"describe":   {"show one machine in detail", runDescribe},
		"events":     {"list lifecycle events of all machines or one; --watch follows", runEvents},
		"retry":      {"try a failed machine's phase again", runRetry},
		"backup":     {"write a snapshot of etcd (statuses, events, leases, tokens, secrets) to a file", runBackup},
		"restore":    {"make a fresh etcd data folder for kiln server from a kiln backup snapshot", runRestore},
		"token":      {"create, list and revoke region API tokens (kiln token create --role viewer)", runToken},
		"completion": {"print a shell completion script: kiln completion bash|zsh|fish", runCompletion},
		"wait":       {"wait until a machine reaches a phase or condition (kiln wait machine vm-1 --for phase=deployed)", runWait},
		"power":      {"power a machine on or off, read its state, choose its next boot device", runPower},
		"rack":       {"run a rack agent: leader election per rack, DHCP, TFTP, HTTP(S) boot, image cache, power tasks", runRack},
		"schema":     {"print the JSON Schema of Kiln documents (for editors)", runSchema},
		"version":    {"print the version", runVersion},
		"vbmc":       {"run virtual BMCs (IPMI and Redfish) that drive QEMU VMs", runVBMC},
	}
}

func run(ctx context.Context, args []string, out, errOut io.Writer) int {
	cmds := commands()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(errOut, cmds)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	if args[0] == "__complete" { // hidden: the completion scripts' helper
		return runComplete(ctx, args[1:], out, errOut)
	}
	c, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(errOut, "kiln: unknown command %q\n\n", args[0])
		usage(errOut, cmds)
		return exitUsage
	}
	return c.run(ctx, args[1:], out, errOut)
}

func usage(w io.Writer, cmds map[string]command) {
	fmt.Fprintln(w, "Kiln provisions bare-metal fleets from an inventory kept in git.")
	fmt.Fprintln(w, "\nUsage: kiln COMMAND [flags]\n\nCommands:")
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, cmds[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'kiln COMMAND -h' for a command's flags.")
}

// newFlags returns a flag set that reports errors to errOut.
func newFlags(name, args string, errOut io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("kiln "+name, flag.ContinueOnError)
	fs.SetOutput(errOut)
	fs.Usage = func() {
		fmt.Fprintf(errOut, "Usage: kiln %s %s\n\nFlags:\n", name, args)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses flags, allowing them after positional arguments too.
func parse(fs *flag.FlagSet, args []string) ([]string, int, bool) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, exitOK, false
			}
			return nil, exitUsage, false
		}
		if fs.NArg() == 0 {
			return pos, 0, true
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// clientFlags are the flags of commands that talk to etcd.
// defaultEtcdEndpoints is --etcd-endpoints when not given.
const defaultEtcdEndpoints = "http://127.0.0.1:2379"

type clientFlags struct {
	server    string // the region API; empty: etcd
	serverCA  string
	context   string // of the config file (config.go)
	token     string // $KILN_TOKEN, or the context's
	endpoints string
	cert, key string
	ca        string
	user      string
	pwFile    string
	prefix    string
	timeout   time.Duration
}

func (c *clientFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.server, "server", os.Getenv("KILN_SERVER"), "the region API, e.g. https://kiln.example:9443, with the token in $KILN_TOKEN; empty: read etcd directly ($KILN_SERVER)")
	fs.StringVar(&c.serverCA, "server-ca", os.Getenv("KILN_SERVER_CA"), "CA bundle for the region API's certificate ($KILN_SERVER_CA)")
	fs.StringVar(&c.context, "context", os.Getenv("KILN_CONTEXT"), "the context of ~/.config/kiln/config ($KILN_CONFIG) to use: its server, CA and token; default its current-context ($KILN_CONTEXT)")
	fs.StringVar(&c.endpoints, "etcd-endpoints", envOr("KILN_ETCD_ENDPOINTS", defaultEtcdEndpoints), "etcd endpoints, comma-separated ($KILN_ETCD_ENDPOINTS)")
	fs.StringVar(&c.cert, "etcd-cert", os.Getenv("KILN_ETCD_CERT"), "client certificate for etcd ($KILN_ETCD_CERT)")
	fs.StringVar(&c.key, "etcd-key", os.Getenv("KILN_ETCD_KEY"), "client key for etcd ($KILN_ETCD_KEY)")
	fs.StringVar(&c.ca, "etcd-ca", os.Getenv("KILN_ETCD_CA"), "CA bundle for etcd ($KILN_ETCD_CA)")
	fs.StringVar(&c.user, "etcd-user", os.Getenv("KILN_ETCD_USER"), "etcd user, when etcd authenticates by password; with client certificates the certificate's CN is the user ($KILN_ETCD_USER)")
	fs.StringVar(&c.pwFile, "etcd-password-file", os.Getenv("KILN_ETCD_PASSWORD_FILE"), "file holding the etcd user's password ($KILN_ETCD_PASSWORD_FILE)")
	fs.StringVar(&c.prefix, "prefix", inventory.DefaultPrefix, "key prefix in etcd")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "how long to wait for etcd")
}

func (c *clientFlags) config() etcd.Config {
	return etcd.Config{Endpoints: splitList(c.endpoints), CertFile: c.cert, KeyFile: c.key, CAFile: c.ca,
		Username: c.user, PasswordFile: c.pwFile}
}

// store connects to etcd; the caller closes the returned client.
func (c *clientFlags) store() (*inventory.Store, func(), error) {
	cli, err := etcd.Connect(c.config())
	if err != nil {
		return nil, nil, err
	}
	return inventory.NewStore(cli, c.prefix, discardLogger()), func() { cli.Close() }, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func runVersion(_ context.Context, args []string, out, errOut io.Writer) int {
	fs := newFlags("version", "", errOut)
	if _, code, ok := parse(fs, args); !ok {
		return code
	}
	fmt.Fprintf(out, "kiln %s (%s, %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return exitOK
}
