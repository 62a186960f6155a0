package boottest

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/netboot/boot"
	"github.com/kilnhq/kiln/spec"
	"github.com/kilnhq/kiln/spec/agentapi"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Backend is the rack agent as the boot server sees it, in memory. A
// machine's purpose is commission until SetPurpose says otherwise.
type Backend struct {
	tokens boot.TokenStore

	mu       sync.Mutex
	inv      *spec.Inventory
	byMAC    map[string]string     // lower-case MAC → machine
	leases   map[string]netip.Addr // mac → address Kiln's DHCP gave it
	dlErr    error                 // DiscoveredLease's error
	purposes map[string]string
	reports  map[string][]agentapi.Report
	events   []string // "machine event detail"
}

var _ boot.Backend = (*Backend)(nil)

// New is a backend over inv (not copied: SetSpec and SetImage change it).
// tokens nil: an in-memory token store (Tokens).
func New(inv *spec.Inventory, tokens boot.TokenStore) *Backend {
	if inv.Machines == nil {
		inv.Machines = map[string]*spec.Machine{}
	}
	if inv.Images == nil {
		inv.Images = map[string]*spec.Image{}
	}
	b := &Backend{inv: inv, byMAC: map[string]string{}, tokens: tokens,
		purposes: map[string]string{}, reports: map[string][]agentapi.Report{}, leases: map[string]netip.Addr{}}
	for _, m := range inv.Machines {
		for _, i := range m.Spec.Interfaces {
			b.byMAC[strings.ToLower(i.MAC)] = m.Metadata.Name
		}
	}
	if b.tokens == nil {
		b.tokens = &Tokens{m: map[string]inventory.BootToken{}}
	}
	return b
}

// Inventory is the inventory the backend serves.
func (b *Backend) Inventory() *spec.Inventory { return b.inv }

// MachineByMAC implements boot.Backend.
func (b *Backend) MachineByMAC(mac string) (*spec.Machine, bool) {
	b.mu.Lock()
	name, ok := b.byMAC[mac]
	b.mu.Unlock()
	if !ok {
		return nil, false
	}
	return b.Machine(name)
}

// Machine implements boot.Backend: a copy, so that SetSpec does not race
// with the server.
func (b *Backend) Machine(name string) (*spec.Machine, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	m, ok := b.inv.Machines[name]
	if !ok {
		return nil, false
	}
	c := *m
	return &c, true
}

// Subnet implements boot.Backend.
func (b *Backend) Subnet(name string) (*spec.Subnet, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.inv.Subnets[name]
	return s, ok
}

// Image implements boot.Backend.
func (b *Backend) Image(name string) (*spec.Image, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	i, ok := b.inv.Images[name]
	return i, ok
}

// EphemeralImage implements boot.Backend: the inventory's ephemeral
// image of arch.
func (b *Backend) EphemeralImage(arch string) (*spec.Image, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, img := range b.inv.Images {
		if img.Spec.Purpose == spec.PurposeEphemeral && img.Spec.Arch == arch {
			return img, true
		}
	}
	return nil, false
}

// Purpose implements boot.Backend.
func (b *Backend) Purpose(_ context.Context, machine string) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if p, ok := b.purposes[machine]; ok {
		return p, nil
	}
	return agentapi.PurposeCommission, nil
}

// Tokens implements boot.Backend.
func (b *Backend) Tokens() boot.TokenStore { return b.tokens }

// Report implements boot.Backend: it records the report.
func (b *Backend) Report(_ context.Context, machine string, r agentapi.Report) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.reports[machine] = append(b.reports[machine], r)
	return nil
}

// Record implements boot.Backend: it records the event.
func (b *Backend) Record(machine, event, detail string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.events = append(b.events, machine+" "+event+" "+detail)
}

// LeaseIP implements boot.Backend.
func (b *Backend) LeaseIP(mac string) (netip.Addr, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	a, ok := b.leases[mac]
	return a, ok
}

// DiscoveredLease implements boot.Backend: no lease, and the error
// SetDiscoveredLeaseErr set.
func (b *Backend) DiscoveredLease(context.Context, string) (clientv3.LeaseID, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return clientv3.NoLease, b.dlErr
}

// SetPurpose sets the machine's boot purpose.
func (b *Backend) SetPurpose(machine, purpose string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.purposes[machine] = purpose
}

// SetLease records that Kiln's DHCP gave ip to mac.
func (b *Backend) SetLease(mac, ip string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.leases[mac] = netip.MustParseAddr(ip)
}

// SetDiscoveredLeaseErr makes DiscoveredLease fail with err.
func (b *Backend) SetDiscoveredLeaseErr(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.dlErr = err
}

// SetSpec changes a machine's spec in place.
func (b *Backend) SetSpec(machine string, f func(*spec.MachineSpec)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f(&b.inv.Machines[machine].Spec)
}

// SetImage adds or replaces an image.
func (b *Backend) SetImage(img *spec.Image) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.inv.Images[img.Metadata.Name] = img
}

// Pending writes the boot-token record a netboot power task writes.
func (b *Backend) Pending(t testing.TB, machine, taskID, purpose string) {
	t.Helper()
	rec := inventory.BootToken{State: inventory.TokenPending, TaskID: taskID, Purpose: purpose}
	if err := b.tokens.Put(context.Background(), machine, rec); err != nil {
		t.Fatalf("pending token record of %s: %v", machine, err)
	}
}

// Reports are the machine's reports, in order.
func (b *Backend) Reports(machine string) []agentapi.Report {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]agentapi.Report(nil), b.reports[machine]...)
}

// Events are the recorded events, "machine event detail", in order.
func (b *Backend) Events() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.events...)
}

// Tokens is an in-memory boot.TokenStore.
type Tokens struct {
	mu sync.Mutex
	m  map[string]inventory.BootToken
}

var _ boot.TokenStore = (*Tokens)(nil)

// Put implements boot.TokenStore.
func (s *Tokens) Put(_ context.Context, machine string, t inventory.BootToken) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[machine] = t
	return nil
}

// PutLeased implements boot.TokenStore; the lease is ignored.
func (s *Tokens) PutLeased(ctx context.Context, machine string, t inventory.BootToken, _ clientv3.LeaseID) error {
	return s.Put(ctx, machine, t)
}

// Get implements boot.TokenStore.
func (s *Tokens) Get(_ context.Context, machine string) (inventory.BootToken, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.m[machine]
	if !ok {
		return t, fmt.Errorf("token of %s: %w", machine, inventory.ErrNotFound)
	}
	return t, nil
}

// Update implements boot.TokenStore.
func (s *Tokens) Update(_ context.Context, machine string, fn func(*inventory.BootToken) error) error {
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
