package boot

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/spec"
	"github.com/kilnhq/kiln/spec/agentapi"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// memBackend is the rack agent as the boot server sees it, built from an
// inventory; purposes are set by the tests.
type memBackend struct {
	inv    *spec.Inventory
	byMAC  map[string]*spec.Machine
	tokens TokenStore

	mu       sync.Mutex
	leases   map[string]netip.Addr // mac → address Kiln's DHCP gave it
	dlErr    error                 // DiscoveredLease's error
	purposes map[string]string
	reports  map[string][]agentapi.Report
	events   []string // machine event detail
}

func loadInventory(t testing.TB, dir string) *spec.Inventory {
	t.Helper()
	res := spec.Load(os.DirFS(dir))
	if res.Problems.Errors() > 0 {
		t.Fatalf("load %s: %v", dir, res.Problems)
	}
	return res.Inventory
}

func newMemBackend(inv *spec.Inventory, tokens TokenStore) *memBackend {
	b := &memBackend{inv: inv, byMAC: map[string]*spec.Machine{}, tokens: tokens,
		purposes: map[string]string{}, reports: map[string][]agentapi.Report{}, leases: map[string]netip.Addr{}}
	for _, m := range inv.Machines {
		for _, i := range m.Spec.Interfaces {
			b.byMAC[strings.ToLower(i.MAC)] = m
		}
	}
	if b.tokens == nil {
		b.tokens = &memTokens{m: map[string]inventory.BootToken{}}
	}
	return b
}

func (b *memBackend) MachineByMAC(mac string) (*spec.Machine, bool) {
	m, ok := b.byMAC[mac]
	return m, ok
}
func (b *memBackend) Machine(n string) (*spec.Machine, bool) {
	m, ok := b.inv.Machines[n]
	return m, ok
}
func (b *memBackend) Subnet(n string) (*spec.Subnet, bool) { s, ok := b.inv.Subnets[n]; return s, ok }
func (b *memBackend) Image(n string) (*spec.Image, bool)   { i, ok := b.inv.Images[n]; return i, ok }
func (b *memBackend) Tokens() TokenStore                   { return b.tokens }

func (b *memBackend) EphemeralImage(arch string) (*spec.Image, bool) {
	for _, img := range b.inv.Images {
		if img.Spec.Purpose == spec.PurposeEphemeral && img.Spec.Arch == arch {
			return img, true
		}
	}
	return nil, false
}

func (b *memBackend) setPurpose(machine, p string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.purposes[machine] = p
}

func (b *memBackend) Purpose(_ context.Context, machine string) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if p, ok := b.purposes[machine]; ok {
		return p, nil
	}
	return agentapi.PurposeCommission, nil
}

func (b *memBackend) Report(_ context.Context, machine string, r agentapi.Report) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.reports[machine] = append(b.reports[machine], r)
	return nil
}

func (b *memBackend) Record(machine, event, detail string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.events = append(b.events, machine+" "+event+" "+detail)
}

func (b *memBackend) LeaseIP(mac string) (netip.Addr, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	a, ok := b.leases[mac]
	return a, ok
}

func (b *memBackend) setLease(mac, ip string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.leases[mac] = netip.MustParseAddr(ip)
}

func (b *memBackend) DiscoveredLease(context.Context, string) (clientv3.LeaseID, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return clientv3.NoLease, b.dlErr
}

// pending writes the boot-token record a netboot power task writes.
func (b *memBackend) pending(t testing.TB, machine, taskID, purpose string) {
	t.Helper()
	rec := inventory.BootToken{State: inventory.TokenPending, TaskID: taskID, Purpose: purpose}
	if err := b.tokens.Put(context.Background(), machine, rec); err != nil {
		t.Fatalf("pending token record of %s: %v", machine, err)
	}
}

func (b *memBackend) eventList() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.events...)
}

type memTokens struct {
	mu sync.Mutex
	m  map[string]inventory.BootToken
}

func (s *memTokens) Put(_ context.Context, machine string, t inventory.BootToken) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[machine] = t
	return nil
}

func (s *memTokens) PutLeased(ctx context.Context, machine string, t inventory.BootToken, _ clientv3.LeaseID) error {
	return s.Put(ctx, machine, t)
}

func (s *memTokens) Get(_ context.Context, machine string) (inventory.BootToken, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.m[machine]
	if !ok {
		return t, fmt.Errorf("token of %s: %w", machine, inventory.ErrNotFound)
	}
	return t, nil
}

func (s *memTokens) Update(_ context.Context, machine string, fn func(*inventory.BootToken) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.m[machine]
	if !ok {
		return fmt.Errorf("token of %s: %w", machine, inventory.ErrNotFound)
	}
	if err := fn(&t); err != nil {
		return err
	}
	s.m[machine] = t
	return nil
}

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type testServer struct {
	*httptest.Server
	backend *memBackend
	clock   *clock
	reg     *prometheus.Registry
	metrics *Metrics
}

func newTestServer(t testing.TB, b *memBackend) *testServer {
	t.Helper()
	c := &clock{t: time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)}
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	// Rate limits out of the way; TestScriptRateLimits sets its own.
	s := New(Options{Now: c.Now, ScriptBurst: 1000}, b, m, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ts := httptest.NewServer(s.Handler()) // listens on 127.0.0.1
	t.Cleanup(ts.Close)
	return &testServer{Server: ts, backend: b, clock: c, reg: reg, metrics: m}
}

// curl runs the real curl against the server and returns the status code
// and body.
func curl(t testing.TB, args ...string) (int, string) {
	t.Helper()
	return curlIn(t, "", args...)
}

// curlIn is curl with stdin (for --data-binary @-).
func curlIn(t testing.TB, stdin string, args ...string) (int, string) {
	t.Helper()
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl not installed (apt-get install -y curl)")
	}
	all := append([]string{"-sS", "--noproxy", "*", "-o", "-", "-w", "\n%{http_code}"}, args...)
	cmd := exec.Command("curl", all...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("curl %s: %v", strings.Join(args, " "), err)
	}
	s := string(out)
	i := strings.LastIndexByte(s, '\n')
	code, err := strconv.Atoi(s[i+1:])
	if err != nil {
		t.Fatalf("curl %s: no status code in %q", strings.Join(args, " "), s)
	}
	return code, s[:i]
}

// tokenOf extracts kiln.token= from an iPXE script.
func tokenOf(t testing.TB, script string) string {
	t.Helper()
	for _, f := range strings.Fields(script) {
		if v, ok := strings.CutPrefix(f, "kiln.token="); ok {
			return v
		}
	}
	t.Fatalf("no kiln.token in script:\n%s", script)
	return ""
}
