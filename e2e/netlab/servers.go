package netlab

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"
)

// StartTimeout bounds how long servers may take to say they are ready.
var StartTimeout = 30 * time.Second

// Server is a DHCP server (or relay) process started by netlab.
type Server struct {
	*Proc
	LeaseFile string // dnsmasq, Kea
	Config    string // Kea: the JSON configuration file
}

// Dnsmasq starts dnsmasq as a DHCP server on one interface of the
// namespace (DNS off, no config file, no /etc/hosts, running as root,
// lease file in the Lab's directory, log on stderr) with the extra
// arguments (--dhcp-range=..., --dhcp-host=..., --dhcp-boot=..., --log-dhcp,
// --no-ping...; a --dhcp-leasefile= given there replaces the default). It
// returns once dnsmasq has bound its sockets.
func Dnsmasq(n *NS, iface string, args ...string) *Server {
	l := n.Lab
	l.T.Helper()
	RequireBinary(l.T, "dnsmasq")
	base := l.Path(l.uniq("file", n.Short+"-dnsmasq"))
	s := &Server{LeaseFile: base + ".leases"}
	var rest []string
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--dhcp-leasefile="); ok {
			s.LeaseFile = v
		} else {
			rest = append(rest, a)
		}
	}
	all := []string{"dnsmasq", "--keep-in-foreground", "--log-facility=-", "--conf-file=/dev/null",
		"--port=0", "--no-resolv", "--no-hosts", "--user=root", "--group=root",
		"--interface=" + iface, "--bind-interfaces",
		"--dhcp-leasefile=" + s.LeaseFile, "--pid-file=" + base + ".pid"}
	s.Proc = n.Start("dnsmasq", append(all, rest...)...)
	s.Expect(`started, version`, StartTimeout)
	return s
}

// Leases returns the lease file's lines (dnsmasq: "expiry mac ip name id").
func (s *Server) Leases() []string {
	b, _ := os.ReadFile(s.LeaseFile)
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "address,") {
			out = append(out, line)
		}
	}
	return out
}

// KeaConfig is the "Dhcp4" object of a Kea configuration. KeaDHCP4 fills
// in, when absent: a memfile lease database in the Lab's directory
// (persist true, no LFC), loggers to stdout at INFO, and valid-lifetime
// 3600. Whatever the loggers, kea-dhcp4.dhcp4 logs INFO to stdout (for
// DHCP4_STARTED).
type KeaConfig map[string]any

// KeaSubnet returns a subnet4 entry: id, CIDR, one pool "start - end", and
// option-data from name/value pairs (e.g. "routers", "10.42.0.1").
func KeaSubnet(id int, cidr, poolStart, poolEnd string, options ...string) map[string]any {
	s := map[string]any{"id": id, "subnet": cidr}
	if poolStart != "" {
		s["pools"] = []any{map[string]any{"pool": poolStart + " - " + poolEnd}}
	}
	var od []any
	for i := 0; i+1 < len(options); i += 2 {
		od = append(od, map[string]any{"name": options[i], "data": options[i+1]})
	}
	if len(od) > 0 {
		s["option-data"] = od
	}
	return s
}

// KeaDHCP4 starts kea-dhcp4 in the namespace with the configuration (see
// KeaConfig), its pid and lock files in the Lab's directory, and returns
// once it has logged DHCP4_STARTED.
func KeaDHCP4(n *NS, cfg KeaConfig) *Server {
	l := n.Lab
	l.T.Helper()
	RequireBinary(l.T, "kea-dhcp4")
	base := l.Path(l.uniq("file", n.Short+"-kea"))
	if err := os.MkdirAll(base, 0o755); err != nil {
		l.T.Fatal(err)
	}
	s := &Server{LeaseFile: base + "/leases4.csv", Config: base + "/kea-dhcp4.json"}
	c := KeaConfig{}
	for k, v := range cfg {
		c[k] = v
	}
	if _, ok := c["lease-database"]; !ok {
		c["lease-database"] = map[string]any{"type": "memfile", "persist": true, "name": s.LeaseFile, "lfc-interval": 0}
	} else if db, ok := c["lease-database"].(map[string]any); ok {
		if name, ok := db["name"].(string); ok {
			s.LeaseFile = name
		}
	}
	// Readiness is DHCP4_STARTED, an INFO message of the kea-dhcp4.dhcp4
	// logger: keep that logger at INFO whatever the others (per-lease
	// messages are in kea-dhcp4.leases).
	stdout := []any{map[string]any{"output": "stdout", "flush": true}}
	loggers, _ := c["loggers"].([]any)
	if _, ok := c["loggers"]; !ok {
		loggers = []any{map[string]any{"name": "kea-dhcp4", "severity": "INFO", "output_options": stdout}}
	}
	if !slices.ContainsFunc(loggers, func(l any) bool { m, _ := l.(map[string]any); return m["name"] == "kea-dhcp4.dhcp4" }) {
		loggers = append(loggers, map[string]any{"name": "kea-dhcp4.dhcp4", "severity": "INFO", "output_options": stdout})
	}
	c["loggers"] = loggers
	if _, ok := c["valid-lifetime"]; !ok {
		c["valid-lifetime"] = 3600
	}
	b, err := json.MarshalIndent(map[string]any{"Dhcp4": c}, "", "  ")
	if err != nil {
		l.T.Fatal(err)
	}
	if err := os.WriteFile(s.Config, b, 0o644); err != nil {
		l.T.Fatal(err)
	}
	s.Proc = n.StartCmd(Cmd{Name: "kea-dhcp4", Args: []string{"kea-dhcp4", "-c", s.Config},
		Env: []string{"KEA_PIDFILE_DIR=" + base, "KEA_LOCKFILE_DIR=" + base}})
	s.Expect(`DHCP4_STARTED`, StartTimeout)
	return s
}

// Dhcrelay starts ISC dhcrelay (IPv4, foreground) in the namespace,
// listening for clients on the downstream interfaces (giaddr: the first
// address of the interface a request came in on) and forwarding to the
// servers through the upstream interfaces. Extra args go before the
// servers (e.g. "-a" to add option 82 with the interface as circuit id).
func Dhcrelay(n *NS, upstream, downstream []string, servers []string, args ...string) *Server {
	l := n.Lab
	l.T.Helper()
	RequireBinary(l.T, "dhcrelay")
	all := []string{"dhcrelay", "-4", "-d", "-pf", l.Path(l.uniq("file", n.Short+"-dhcrelay") + ".pid")}
	for _, u := range upstream {
		all = append(all, "-iu", u)
	}
	for _, d := range downstream {
		all = append(all, "-id", d)
	}
	all = append(all, args...)
	all = append(all, servers...)
	s := &Server{Proc: n.Start("dhcrelay", all...)}
	s.Expect(`Sending on`, StartTimeout)
	return s
}

// Tcpdump captures DHCP traffic (udp ports 67, 68 and 4011, or the given
// filter) on an interface of the namespace, one decoded line per packet in
// its log (-n -l -e -vvv), and returns once it is listening. Use it to
// check how replies travel (e.g. unicast to giaddr).
func Tcpdump(n *NS, iface string, filter ...string) *Proc {
	l := n.Lab
	l.T.Helper()
	RequireBinary(l.T, "tcpdump")
	if len(filter) == 0 {
		filter = []string{"udp", "and", "(port", "67", "or", "port", "68", "or", "port", "4011)"}
	}
	p := n.Start("tcpdump-"+iface, append([]string{"tcpdump", "-i", iface, "-n", "-l", "-e", "-vvv", "-s", "0", "-U"}, filter...)...)
	p.Expect(`listening on`, StartTimeout)
	return p
}

// WriteFile writes a file in the Lab's directory and returns its path.
func (l *Lab) WriteFile(name, content string) string {
	l.T.Helper()
	p := l.Path(name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		l.T.Fatal(fmt.Errorf("netlab: %w", err))
	}
	return p
}
