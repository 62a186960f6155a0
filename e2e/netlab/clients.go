package netlab

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ClientOpts says how a DHCP client identifies itself.
type ClientOpts struct {
	MAC         string  // set on the interface before the client starts; "" keeps the current one
	Hostname    string  // option 12
	VendorClass string  // option 60, e.g. "PXEClient:Arch:00000:UNDI:002001"
	UserClass   string  // option 77, e.g. "iPXE"
	ClientArch  *uint16 // option 93 (see Arch); nil: not sent
	RequestIP   string  // option 50: ask for this address

	Timeout time.Duration // how long the client tries before giving up (default 30 s)
	// NoAssign: record the lease only. By default the recording script
	// also puts the address on the interface (inside the namespace).
	NoAssign bool
	// DefaultRoute: the script also adds a default route (inside the
	// namespace) via the first router offered.
	DefaultRoute bool
	// Stay (udhcpc): keep running after the lease is bound, to renew
	// (Renew) or to see later events. dhclient always stays.
	Stay bool

	Conf []string // dhclient: extra dhclient.conf statements
	Args []string // extra command-line arguments
}

// Arch returns a pointer for ClientOpts.ClientArch: 0 BIOS, 7 UEFI x64,
// 11 UEFI arm64, 16 UEFI x64 HTTP boot...
func Arch(v uint16) *uint16 { return &v }

// Client is a running DHCP client whose script records every event.
type Client struct {
	Kind  string // "dhclient" or "udhcpc"
	NS    *NS
	Iface string
	MAC   string
	Proc  *Proc
	Dir   string // one file per script invocation: ev.<unix-nanos>.<pid>
}

// recordScript is the client script of both clients: it records the event
// (dhclient's $reason, udhcpc's $1) and the whole environment into one
// file per event, written atomically, and only touches the interface it
// serves, inside its own namespace.
const recordScript = `#!/bin/sh
# netlab: record DHCP client events; only this namespace's interface is touched.
dir=%q
assign=%q
route=%q
ev="${reason:-$1}"
case "$ev" in
PREINIT|deconfig)
	ip link set dev "$interface" up
	[ -n "$assign" ] && ip -4 addr flush dev "$interface" ;;
BOUND|RENEW|REBIND|REBOOT)
	if [ -n "$assign" ] && [ -n "$new_ip_address" ]; then
		ip -4 addr replace "$new_ip_address/${new_subnet_mask:-32}" dev "$interface"
	fi
	if [ -n "$route" ] && [ -n "$new_routers" ]; then
		set -- $new_routers
		ip route replace default via "$1" dev "$interface"
	fi ;;
bound|renew)
	if [ -n "$assign" ] && [ -n "$ip" ]; then
		ip -4 addr replace "$ip/${mask:-32}" dev "$interface"
	fi
	if [ -n "$route" ] && [ -n "$router" ]; then
		set -- $router
		ip route replace default via "$1" dev "$interface"
	fi ;;
esac
tmp="$dir/.ev.$$"
{ echo "netlab_event=$ev"; env; } > "$tmp"
mv "$tmp" "$dir/ev.$(date +%%s%%N).$$"
exit 0
`

func recordScriptFor(dir string, assign, route bool) string {
	flag := func(b bool) string {
		if b {
			return "1"
		}
		return ""
	}
	return fmt.Sprintf(recordScript, dir, flag(assign), flag(route))
}

// timeout is o.Timeout, 30 s when unset.
func (o ClientOpts) timeout() time.Duration {
	if o.Timeout == 0 {
		return 30 * time.Second
	}
	return o.Timeout
}

// newClient prepares a DHCP client of kind, run by binary (skipping the
// test when it is not installed), on iface.
func (n *NS) newClient(kind, binary, iface string, o ClientOpts) *Client {
	l := n.Lab
	l.T.Helper()
	RequireBinary(l.T, binary)
	if o.MAC != "" {
		n.SetMAC(iface, o.MAC)
	}
	c := &Client{Kind: kind, NS: n, Iface: iface, MAC: n.MAC(iface)}
	c.Dir = l.Path(l.uniq("file", n.Short+"-"+kind+"-"+iface))
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		l.T.Fatal(err)
	}
	if err := os.WriteFile(c.Dir+"/script", []byte(recordScriptFor(c.Dir, !o.NoAssign, o.DefaultRoute)), 0o755); err != nil {
		l.T.Fatal(err)
	}
	return c
}

// Dhclient starts ISC dhclient on the interface (once, in the foreground,
// with its own config, lease and pid files and the recording script; it
// never touches resolv.conf or anything outside the namespace).
func Dhclient(n *NS, iface string, o ClientOpts) *Client {
	n.Lab.T.Helper()
	c := n.newClient("dhclient", "dhclient", iface, o)
	timeout := o.timeout()
	conf := []string{
		fmt.Sprintf("timeout %d;", int(timeout.Seconds())),
		"initial-interval 1;",
		"backoff-cutoff 2;",
		"option pxe-system-type code 93 = unsigned integer 16;",
		"request subnet-mask, broadcast-address, routers, domain-name, domain-name-servers, host-name, interface-mtu, " +
			"dhcp-lease-time, dhcp-server-identifier, tftp-server-name, bootfile-name, ntp-servers, vendor-encapsulated-options;",
	}
	if o.Hostname != "" {
		conf = append(conf, fmt.Sprintf("send host-name %q;", o.Hostname))
	}
	if o.VendorClass != "" {
		conf = append(conf, fmt.Sprintf("send vendor-class-identifier %q;", o.VendorClass))
	}
	if o.UserClass != "" {
		conf = append(conf, fmt.Sprintf("send user-class %q;", o.UserClass))
	}
	if o.ClientArch != nil {
		conf = append(conf, fmt.Sprintf("send pxe-system-type %d;", *o.ClientArch))
	}
	if o.RequestIP != "" {
		conf = append(conf, fmt.Sprintf("send dhcp-requested-address %s;", o.RequestIP))
	}
	conf = append(conf, o.Conf...)
	if err := os.WriteFile(c.Dir+"/dhclient.conf", []byte(strings.Join(conf, "\n")+"\n"), 0o644); err != nil {
		n.Lab.T.Fatal(err)
	}
	args := []string{"dhclient", "-4", "-v", "-1", "-d",
		"-cf", c.Dir + "/dhclient.conf", "-sf", c.Dir + "/script",
		"-lf", c.Dir + "/dhclient.leases", "-pf", c.Dir + "/dhclient.pid"}
	args = append(args, o.Args...)
	c.Proc = n.Start("dhclient-"+iface, append(args, iface)...)
	return c
}

// Udhcpc starts busybox udhcpc on the interface, in the foreground, with
// the recording script (udhcpc has no default script here).
func Udhcpc(n *NS, iface string, o ClientOpts) *Client {
	n.Lab.T.Helper()
	c := n.newClient("udhcpc", "busybox", iface, o)
	timeout := o.timeout()
	tries := int(timeout.Seconds()) / 2
	tries = max(tries, 1)
	args := []string{"busybox", "udhcpc", "-f", "-n", "-t", strconv.Itoa(tries), "-T", "2",
		"-s", c.Dir + "/script", "-i", iface,
		"-O", "mtu", "-O", "hostname", "-O", "domain", "-O", "dns", "-O", "router",
		"-O", "tftp", "-O", "bootfile", "-O", "lease", "-O", "serverid"}
	if !o.Stay {
		args = append(args, "-q")
	}
	if o.Hostname != "" {
		args = append(args, "-x", "hostname:"+o.Hostname)
	}
	if o.VendorClass != "" {
		args = append(args, "-V", o.VendorClass)
	}
	if o.UserClass != "" {
		// RFC 3004 user class: length-prefixed instances; iPXE and most
		// servers send (and accept) the bare string, as dhclient does.
		args = append(args, "-x", fmt.Sprintf("0x4d:%x", o.UserClass))
	}
	if o.ClientArch != nil {
		args = append(args, "-x", fmt.Sprintf("0x5d:%04x", *o.ClientArch))
	}
	if o.RequestIP != "" {
		args = append(args, "-r", o.RequestIP)
	}
	args = append(args, o.Args...)
	c.Proc = n.Start("udhcpc-"+iface, args...)
	return c
}

// Renew asks the client to renew now (udhcpc: SIGUSR1).
func (c *Client) Renew() error {
	if c.Kind != "udhcpc" {
		return fmt.Errorf("%s can't be told to renew; start a new one", c.Kind)
	}
	return c.Proc.Signal(syscall.SIGUSR1)
}

// Release asks the client to release its lease (udhcpc: SIGUSR2).
func (c *Client) Release() error {
	if c.Kind != "udhcpc" {
		return fmt.Errorf("%s can't be told to release", c.Kind)
	}
	return c.Proc.Signal(syscall.SIGUSR2)
}

// Event is one run of the client's script: the event name (dhclient's
// reason, e.g. BOUND; udhcpc's argument, e.g. bound) and its environment.
type Event struct {
	Name string
	Vars map[string]string
	File string
}

// Events returns the events recorded so far, oldest first.
func (c *Client) Events() []Event {
	matches, _ := filepath.Glob(c.Dir + "/ev.*")
	sort.Strings(matches) // ev.<19-digit nanos>.<pid>
	var evs []Event
	for _, m := range matches {
		b, err := os.ReadFile(m)
		if err != nil {
			continue
		}
		vars := parseEnv(string(b))
		evs = append(evs, Event{Name: vars["netlab_event"], Vars: vars, File: m})
	}
	return evs
}

func parseEnv(s string) map[string]string {
	vars := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			vars[k] = v
		}
	}
	return vars
}

// bound reports whether an event carries a lease.
func bound(ev string) bool {
	switch ev {
	case "BOUND", "RENEW", "REBIND", "REBOOT", "bound", "renew":
		return true
	}
	return false
}

// WaitLease waits for the first event carrying a lease after the first
// `after` events (0: any) and returns it. It fails fast when the client
// exits without one.
func (c *Client) WaitLease(after int, timeout time.Duration) (*Lease, error) {
	deadline := time.Now().Add(timeout)
	for {
		evs := c.Events()
		for i := after; i < len(evs); i++ {
			if bound(evs[i].Name) {
				return ParseLease(c.Kind, evs[i].Vars)
			}
		}
		exited := c.Proc.Exited()
		if exited && len(c.Events()) == len(evs) {
			return nil, fmt.Errorf("%s on %s exited (%s) without a lease; events %v", c.Kind, c.Iface, c.Proc.state(), names(evs))
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s on %s: no lease within %s; events %v: %w", c.Kind, c.Iface, timeout, names(evs), ErrTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func names(evs []Event) []string {
	var s []string
	for _, e := range evs {
		s = append(s, e.Name)
	}
	return s
}

// Lease waits up to 60 s for the client's first lease, failing the test
// (with the client's output) if none comes.
func (c *Client) Lease() *Lease {
	t := c.NS.Lab.T
	t.Helper()
	l, err := c.WaitLease(0, 60*time.Second)
	if err != nil {
		t.Fatalf("netlab: %v; output:\n%s", err, tail(c.Proc.Log(), 4000))
	}
	return l
}

// Lease is what a client was given, from either client's variables.
type Lease struct {
	Client     string // dhclient or udhcpc
	Event      string
	IP         netip.Addr
	Prefix     netip.Prefix // IP with its mask
	Routers    []netip.Addr
	DNS        []netip.Addr
	Domain     string
	Hostname   string
	ServerID   netip.Addr
	LeaseTime  time.Duration
	MTU        int
	NextServer netip.Addr // siaddr
	Filename   string     // the file field, or option 67
	ServerName string     // the sname field, or option 66
	Vars       map[string]string
}

// ParseLease builds a Lease from a client's recorded variables.
func ParseLease(kind string, v map[string]string) (*Lease, error) {
	l := &Lease{Client: kind, Event: v["netlab_event"], Vars: v}
	var err error
	get := func(names ...string) string {
		for _, n := range names {
			if s := v[n]; s != "" {
				return s
			}
		}
		return ""
	}
	addr := func(s string) netip.Addr {
		if s == "" {
			return netip.Addr{}
		}
		a, e := netip.ParseAddr(s)
		if e != nil && err == nil {
			err = fmt.Errorf("bad address %q", s)
		}
		return a
	}
	addrs := func(s string) []netip.Addr {
		var as []netip.Addr
		for _, f := range strings.Fields(s) {
			as = append(as, addr(f))
		}
		return as
	}
	atoi := func(s string) int { n, _ := strconv.Atoi(s); return n }
	var bits int
	switch kind {
	case "dhclient":
		l.IP = addr(v["new_ip_address"])
		bits = maskBits(v["new_subnet_mask"])
		l.Routers = addrs(v["new_routers"])
		l.DNS = addrs(v["new_domain_name_servers"])
		l.Domain = v["new_domain_name"]
		l.Hostname = v["new_host_name"]
		l.ServerID = addr(v["new_dhcp_server_identifier"])
		l.LeaseTime = time.Duration(atoi(v["new_dhcp_lease_time"])) * time.Second
		l.MTU = atoi(v["new_interface_mtu"])
		l.NextServer = addr(v["new_next_server"])
		l.Filename = get("new_filename", "new_bootfile_name")
		l.ServerName = get("new_server_name", "new_tftp_server_name")
	case "udhcpc":
		l.IP = addr(v["ip"])
		bits = atoi(v["mask"])
		if v["mask"] == "" {
			bits = maskBits(v["subnet"])
		}
		l.Routers = addrs(v["router"])
		l.DNS = addrs(v["dns"])
		l.Domain = v["domain"]
		l.Hostname = v["hostname"]
		l.ServerID = addr(v["serverid"])
		l.LeaseTime = time.Duration(atoi(v["lease"])) * time.Second
		l.MTU = atoi(v["mtu"])
		l.NextServer = addr(v["siaddr"])
		l.Filename = get("boot_file", "bootfile")
		l.ServerName = get("sname", "tftp")
	default:
		return nil, fmt.Errorf("unknown client %q", kind)
	}
	if l.NextServer == netip.IPv4Unspecified() {
		l.NextServer = netip.Addr{}
	}
	if l.IP.IsValid() && bits >= 0 {
		l.Prefix = netip.PrefixFrom(l.IP, bits)
	}
	if !l.IP.IsValid() && err == nil {
		err = fmt.Errorf("%s event %s has no address", kind, l.Event)
	}
	return l, err
}

// maskBits turns a dotted mask into a prefix length (-1 when absent or bad).
func maskBits(s string) int {
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return -1
	}
	b := a.As4()
	n := 0
	for _, x := range b {
		for i := 7; i >= 0; i-- {
			if x&(1<<i) == 0 {
				return n
			}
			n++
		}
	}
	return n
}
