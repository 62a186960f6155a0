// Package netlab builds throw-away networks out of Linux network namespaces
// for end-to-end tests of DHCP, PXE and the rack agent: namespaces, veth
// pairs, bridges, taps for QEMU, addresses, routes and sysctls, processes
// run inside a namespace with their output captured, and real clients
// (ISC dhclient, busybox udhcpc, perfdhcp, a Go probe) and servers (dnsmasq,
// Kea, ISC dhcrelay) to drive them with.
//
// Everything lives inside namespaces the Lab creates; nothing is added to
// the root namespace (no address, route, link or sysctl), and no packet
// leaves the Lab's namespaces. Namespaces are named
// kl<pid>x<n>-<name>, so a Lab removes those left behind by a test binary
// that died (its pid is gone) before creating its own, and removes its own
// at cleanup: processes first (SIGTERM, then SIGKILL), then namespaces,
// which destroys their links.
//
// Functions that take a testing.TB fail the test on error (t.Fatalf) and so
// must be called from the test's goroutine; those returning an error don't.
// It needs root and iproute2; Require skips a test that lacks them. Set
// NETLAB_KEEP=DIR to keep each Lab's files (configs, leases, every
// process's log) in DIR after the test.
package netlab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Packages maps the binaries netlab runs to the Debian packages that ship them.
var Packages = map[string]string{
	"ip":                 "iproute2",
	"dhclient":           "isc-dhcp-client",
	"busybox":            "busybox-static",
	"dnsmasq":            "dnsmasq-base",
	"kea-dhcp4":          "kea-dhcp4-server",
	"perfdhcp":           "kea-admin",
	"dhcrelay":           "isc-dhcp-relay",
	"tcpdump":            "tcpdump",
	"qemu-system-x86_64": "qemu-system-x86",
}

// Require skips the test unless it runs as root with iproute2 installed,
// which network namespaces need.
func Require(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("netlab: network namespaces need root; run the e2e suite as root (make e2e)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("netlab: `ip` (iproute2) is not installed")
	}
}

// RequireBinary skips the test when one of the binaries is missing, naming
// the Debian package to install. Under CI (CI=true), whose script installs
// them, a missing binary fails the test instead: a skip there would hide a
// missing install step.
func RequireBinary(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			pkg := Packages[n]
			if pkg == "" {
				pkg = n
			}
			msg := fmt.Sprintf("netlab: %s is not installed (apt-get install %s)", n, pkg)
			if os.Getenv("CI") == "true" {
				t.Fatal(msg + "; .ci/run should have installed it")
			}
			t.Skip(msg)
		}
	}
}

var labSeq atomic.Int64

// Lab owns namespaces and processes and removes them at the test's end.
type Lab struct {
	T      testing.TB
	Prefix string // prefix of every namespace name: kl<pid>x<n>-
	Dir    string // configs, leases and process logs
	// StopTimeout is how long Stop waits after SIGTERM before SIGKILL
	// (default 10 s).
	StopTimeout time.Duration

	mu     sync.Mutex
	nss    []*NS
	procs  []*Proc
	names  map[string]int
	closed bool
}

// New makes a Lab for the test after removing namespaces left behind by
// dead test processes. It skips the test when Require would.
func New(t testing.TB) *Lab {
	t.Helper()
	Require(t)
	RemoveStale(t)
	l := &Lab{
		T:           t,
		Prefix:      fmt.Sprintf("kl%dx%d-", os.Getpid(), labSeq.Add(1)),
		Dir:         t.TempDir(),
		StopTimeout: 10 * time.Second,
		names:       map[string]int{},
	}
	t.Cleanup(l.Close)
	return l
}

var staleName = regexp.MustCompile(`^kl(\d+)x\d+-`)

// RemoveStale deletes namespaces named by a netlab Lab of a process that no
// longer exists, killing what still runs in them first.
func RemoveStale(t testing.TB) {
	t.Helper()
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		return
	}
	for _, e := range entries {
		m := staleName.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		if pid == os.Getpid() || processAlive(pid) {
			continue
		}
		if err := deleteNS(e.Name()); err != nil {
			t.Logf("netlab: removing stale namespace %s: %v", e.Name(), err)
		} else {
			t.Logf("netlab: removed stale namespace %s", e.Name())
		}
	}
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// deleteNS kills every process in the namespace and deletes it.
func deleteNS(name string) error {
	for range 3 {
		out, _ := exec.Command("ip", "netns", "pids", name).Output()
		pids := strings.Fields(string(out))
		if len(pids) == 0 {
			break
		}
		for _, p := range pids {
			if pid, err := strconv.Atoi(p); err == nil && pid != os.Getpid() {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		// Killed processes leave the namespace once reaped; wait briefly.
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) {
			out, _ := exec.Command("ip", "netns", "pids", name).Output()
			if len(strings.Fields(string(out))) == 0 {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del %s: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Close stops every process (newest first) and deletes every namespace.
// It runs at the test's cleanup; calling it earlier is allowed.
func (l *Lab) Close() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	procs, nss := l.procs, l.nss
	l.mu.Unlock()
	failed := l.T.Failed()
	for i := len(procs) - 1; i >= 0; i-- {
		p := procs[i]
		p.Stop()
		if failed {
			l.T.Logf("netlab: %s (%s) %s; its output (%s):\n%s", p.Name, strings.Join(p.Args, " "), p.state(), p.LogPath, tail(p.Log(), 6000))
		}
	}
	for i := len(nss) - 1; i >= 0; i-- {
		if err := deleteNS(nss[i].Name); err != nil {
			l.T.Errorf("netlab: %v", err)
		}
	}
	if keep := os.Getenv("NETLAB_KEEP"); keep != "" {
		dst := filepath.Join(keep, strings.NewReplacer("/", "_", " ", "_").Replace(l.T.Name())+"-"+strings.TrimSuffix(l.Prefix, "-"))
		if out, err := exec.Command("cp", "-r", l.Dir, dst).CombinedOutput(); err != nil {
			l.T.Logf("netlab: keeping the lab's files: %v %s", err, out)
		} else {
			l.T.Logf("netlab: the lab's files (configs, leases, logs) are kept in %s", dst)
		}
	}
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// uniq returns name, or name-2, name-3… when already used in this Lab
// for the same kind of thing (process, file).
func (l *Lab) uniq(kind, name string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.names[kind+"/"+name]++
	if n := l.names[kind+"/"+name]; n > 1 {
		return fmt.Sprintf("%s-%d", name, n)
	}
	return name
}

// Path returns a path for a file in the Lab's directory.
func (l *Lab) Path(name string) string { return l.Dir + "/" + name }

// NS is a network namespace of a Lab.
type NS struct {
	Lab   *Lab
	Name  string // full name, as `ip netns` knows it
	Short string // the name given to NewNS
}

func (n *NS) String() string { return n.Name }

// NewNS creates a namespace (named Prefix+short) with loopback up.
func (l *Lab) NewNS(short string) *NS {
	l.T.Helper()
	n := &NS{Lab: l, Name: l.Prefix + short, Short: short}
	if out, err := exec.Command("ip", "netns", "add", n.Name).CombinedOutput(); err != nil {
		l.T.Fatalf("netlab: ip netns add %s: %v: %s", n.Name, err, out)
	}
	l.mu.Lock()
	l.nss = append(l.nss, n)
	l.mu.Unlock()
	n.IP("link", "set", "lo", "up")
	return n
}

// Command returns `ip netns exec NS args...`, not started.
func (n *NS) Command(args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.Name}, args...)...)
}

// Exec runs a command inside the namespace and returns its combined output.
func (n *NS) Exec(args ...string) (string, error) {
	out, err := n.Command(args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in %s: %s: %v: %s", n.Short, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// MustExec is Exec failing the test on error.
func (n *NS) MustExec(args ...string) string {
	n.Lab.T.Helper()
	out, err := n.Exec(args...)
	if err != nil {
		n.Lab.T.Fatalf("netlab: %v", err)
	}
	return out
}

// IP runs `ip -n NS args...`, failing the test on error.
func (n *NS) IP(args ...string) string {
	n.Lab.T.Helper()
	out, err := exec.Command("ip", append([]string{"-n", n.Name}, args...)...).CombinedOutput()
	if err != nil {
		n.Lab.T.Fatalf("netlab: ip -n %s %s: %v: %s", n.Short, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Up sets a link up.
func (n *NS) Up(iface string) { n.Lab.T.Helper(); n.IP("link", "set", "dev", iface, "up") }

// SetMAC sets a link's hardware address (taking it down and up again).
func (n *NS) SetMAC(iface, mac string) {
	n.Lab.T.Helper()
	n.IP("link", "set", "dev", iface, "down")
	n.IP("link", "set", "dev", iface, "address", mac)
	n.IP("link", "set", "dev", iface, "up")
}

// MAC returns a link's hardware address.
func (n *NS) MAC(iface string) string {
	n.Lab.T.Helper()
	out := n.IP("-o", "link", "show", "dev", iface)
	f := strings.Fields(out)
	for i := range f {
		if f[i] == "link/ether" && i+1 < len(f) {
			return f[i+1]
		}
	}
	n.Lab.T.Fatalf("netlab: no hardware address on %s in %s: %s", iface, n.Short, out)
	return ""
}

// AddAddr adds an address (CIDR form) to a link.
func (n *NS) AddAddr(iface, cidr string) {
	n.Lab.T.Helper()
	n.IP("addr", "add", cidr, "dev", iface)
}

// Addrs returns the IPv4 addresses on a link.
func (n *NS) Addrs(iface string) []netip.Prefix {
	n.Lab.T.Helper()
	var ps []netip.Prefix
	for _, f := range strings.Fields(n.IP("-4", "-o", "addr", "show", "dev", iface)) {
		if p, err := netip.ParsePrefix(f); err == nil {
			ps = append(ps, p)
		}
	}
	return ps
}

// AddRoute adds a route inside the namespace: dst ("default" or a CIDR)
// via a gateway.
func (n *NS) AddRoute(dst, via string) {
	n.Lab.T.Helper()
	n.IP("route", "add", dst, "via", via)
}

// Bridge creates a bridge (no STP, no forwarding delay) and sets it up.
func (n *NS) Bridge(name string) {
	n.Lab.T.Helper()
	n.IP("link", "add", "name", name, "type", "bridge", "stp_state", "0", "forward_delay", "0")
	n.Up(name)
}

// Attach enslaves a link to a bridge and sets it up.
func (n *NS) Attach(iface, bridge string) {
	n.Lab.T.Helper()
	n.IP("link", "set", "dev", iface, "master", bridge)
	n.Up(iface)
}

// Tap creates a tap device (for QEMU's -netdev tap,ifname=NAME,script=no)
// on a bridge of this namespace. QEMU must run in this namespace.
func (n *NS) Tap(name, bridge string) {
	n.Lab.T.Helper()
	n.IP("tuntap", "add", "dev", name, "mode", "tap")
	n.Attach(name, bridge)
}

// Sysctl sets a sysctl inside the namespace (key as in `sysctl -w`,
// e.g. net.ipv4.ip_forward).
func (n *NS) Sysctl(key, value string) error {
	_, err := n.Exec("sysctl", "-q", "-w", key+"="+value)
	return err
}

// SysctlValue reads a sysctl inside the namespace.
func (n *NS) SysctlValue(key string) (string, error) {
	out, err := n.Exec("sysctl", "-n", key)
	return strings.TrimSpace(out), err
}

// Forwarding turns on IPv4 forwarding inside the namespace.
func (n *NS) Forwarding() {
	n.Lab.T.Helper()
	if err := n.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		n.Lab.T.Fatalf("netlab: %v", err)
	}
}

// RaiseRcvBuf makes sure net.core.rmem_max and rmem_default are at least
// bytes inside the namespace, as load generators need. Kernels that make
// them read-only in a child namespace (6.18 does; the value is inherited
// from the host) keep the inherited value: it reports what it got and
// never changes the root namespace.
func (n *NS) RaiseRcvBuf(bytes int) (max int, err error) {
	for _, key := range []string{"net.core.rmem_max", "net.core.rmem_default"} {
		cur, rerr := n.SysctlValue(key)
		v, _ := strconv.Atoi(cur)
		if rerr == nil && v >= bytes {
			if key == "net.core.rmem_max" {
				max = v
			}
			continue
		}
		if werr := n.Sysctl(key, strconv.Itoa(bytes)); werr != nil {
			err = errors.Join(err, fmt.Errorf("%s is %d in %s and can't be raised there: %w", key, v, n.Short, werr))
		} else {
			v = bytes
		}
		if key == "net.core.rmem_max" {
			max = v
		}
	}
	return max, err
}

// Do runs f on an OS thread switched into the namespace: sockets f opens
// belong to the namespace and stay there after Do returns.
func (n *NS) Do(f func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	target, err := os.Open("/run/netns/" + n.Name)
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer target.Close()
	if err := setns(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", n.Short, err)
	}
	ferr := f()
	if err := setns(orig); err != nil {
		// Leave the thread locked: the runtime ends it with the goroutine
		// rather than reuse a thread stuck in the wrong namespace.
		return errors.Join(ferr, fmt.Errorf("setns back: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}

func setns(f *os.File) error {
	if sysSetns == 0 {
		return syscall.ENOSYS
	}
	_, _, e := syscall.RawSyscall(sysSetns, f.Fd(), syscall.CLONE_NEWNET, 0)
	if e != 0 {
		return e
	}
	return nil
}

// Veth joins two namespaces with a veth pair (aName in a, bName in b),
// created directly in them, and sets both ends up.
func (l *Lab) Veth(a *NS, aName string, b *NS, bName string) {
	l.T.Helper()
	a.IP("link", "add", "name", aName, "type", "veth", "peer", "name", bName, "netns", b.Name)
	a.Up(aName)
	b.Up(bName)
}

// Namespaces lists the Lab's namespaces (full names), for diagnostics.
func (l *Lab) Namespaces() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var s []string
	for _, n := range l.nss {
		s = append(s, n.Name)
	}
	sort.Strings(s)
	return s
}

// ListNamespaces returns the names of every namespace on the host that
// starts with prefix (used by tests checking that cleanup is complete).
func ListNamespaces(prefix string) []string {
	entries, _ := os.ReadDir("/run/netns")
	var s []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			s = append(s, e.Name())
		}
	}
	return s
}

// WaitFile polls a file every 20 ms until ok accepts its content or the
// timeout passes. A missing file counts as empty.
func WaitFile(path string, timeout time.Duration, ok func([]byte) bool) ([]byte, error) {
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(path)
		if ok(b) {
			return b, nil
		}
		if time.Now().After(deadline) {
			return b, fmt.Errorf("timed out after %s waiting for %s", timeout, path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// MustMAC parses a MAC address, panicking on error (for constants).
func MustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}
