package boot

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/spec"
	"github.com/kilnhq/kiln/spec/agentapi"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Backend is what the boot server needs from the rack agent. Lookups read
// the agent's in-memory snapshot of the inventory and must be cheap.
type Backend interface {
	MachineByMAC(mac string) (*spec.Machine, bool) // mac: lower-case, colon-separated
	Machine(name string) (*spec.Machine, bool)
	Subnet(name string) (*spec.Subnet, bool)
	Image(name string) (*spec.Image, bool)
	// EphemeralImage is the ephemeral image machines of arch boot.
	EphemeralImage(arch string) (*spec.Image, bool)
	// Purpose is the machine's boot purpose, from its status.
	Purpose(ctx context.Context, machine string) (string, error)
	Tokens() TokenStore
	// Report stores what a machine agent reported.
	Report(ctx context.Context, machine string, r agentapi.Report) error
	// Record adds an event to the machine's boot timeline; it must not block.
	Record(machine, event, detail string)
	// LeaseIP is the address Kiln's DHCP gave mac (directly or through a
	// relay); false when none is known (proxyDHCP mode).
	LeaseIP(mac string) (netip.Addr, bool)
	// DiscoveredLease is the etcd lease every key written for the unknown
	// MAC carries; an error wrapping ErrDiscoveryFull when the rack
	// records no more unknown MACs.
	DiscoveredLease(ctx context.Context, mac string) (clientv3.LeaseID, error)
}

// TokenStore keeps each machine's current boot token (its hash).
// *inventory.Tokens implements it on etcd.
type TokenStore interface {
	Put(ctx context.Context, machine string, t inventory.BootToken) error
	// PutLeased is Put with the record attached to an etcd lease.
	PutLeased(ctx context.Context, machine string, t inventory.BootToken, lease clientv3.LeaseID) error
	// Get returns an error wrapping inventory.ErrNotFound when the machine
	// has no token.
	Get(ctx context.Context, machine string) (inventory.BootToken, error)
	// Update changes the machine's current token record (compare-and-swap).
	Update(ctx context.Context, machine string, fn func(*inventory.BootToken) error) error
}

// Options configure the server.
type Options struct {
	// BaseURL is the server's URL as machines reach it, e.g.
	// http://10.42.0.1:8080. Empty: http://<Host header of the request>.
	BaseURL string
	// TokenTTL is how long a boot token is valid; default 2h.
	TokenTTL time.Duration
	// OSTokenTTL is how long the deployed OS's report-in token is valid
	// from when the deploy's vendor-data is served; default 24h.
	OSTokenTTL time.Duration
	// AgentURL is the URL the machine agent and the deployed OS reach the
	// agent API at (kiln.url=, the task's image and metadata URLs), e.g.
	// https://rack:8443. Empty: the base URL. iPXE's own fetches
	// (kernel, initrd, script) stay on BaseURL.
	AgentURL string
	// ScriptRatePerMAC and ScriptRatePerIP bound script fetches (per
	// second, with a burst of ScriptBurst); defaults 1/s per MAC, 10/s
	// per source address, burst 5.
	ScriptRatePerMAC float64
	ScriptRatePerIP  float64
	ScriptBurst      int
	// MaxLimiters bounds each rate limiter map; default 4096.
	MaxLimiters int
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// DefaultTokenTTL is the default lifetime of a boot token.
const DefaultTokenTTL = 2 * time.Hour

// Boot timeline events.
const (
	EventScript   = "http-script"   // an iPXE script was served (detail: purpose)
	EventMetadata = "http-metadata" // a NoCloud file was fetched (detail: file)
	EventAgent    = "agent-report"  // the machine agent reported (detail: what)
	EventTask     = "agent-task"    // the machine agent fetched its task
	EventOS       = "os-report"     // the deployed OS reported in (detail: hostname)
	EventRefused  = "boot-refused"  // a script fetch got no token, or a token was refused (detail: why)
	EventBound    = "token-bound"   // proxyDHCP: a token was bound to its first fetcher (detail: address)
)

// DefaultOSTokenTTL is the default lifetime of an OS report-in token.
const DefaultOSTokenTTL = 24 * time.Hour

// ErrDiscoveryFull means the rack records no more unknown MACs.
var ErrDiscoveryFull = errors.New("discovered machines cap reached")
