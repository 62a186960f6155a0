package boot

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/spec"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Boot purposes: what a machine does on its next network boot.
const (
	PurposeDiscover   = "discover"   // unknown MAC: boot the ephemeral image and report facts
	PurposeCommission = "commission" // inventory the hardware
	PurposeDeploy     = "deploy"     // write the OS image to the root disk
	PurposeErase      = "erase"      // wipe the disks
	PurposeLocal      = "local"      // boot from the local disk
	PurposeOff        = "off"        // power off
)

// Purposes lists every purpose.
var Purposes = []string{PurposeDiscover, PurposeCommission, PurposeDeploy, PurposeErase, PurposeLocal, PurposeOff}

// ephemeral reports whether the purpose boots the ephemeral image.
func ephemeral(p string) bool {
	switch p {
	case PurposeDiscover, PurposeCommission, PurposeDeploy, PurposeErase:
		return true
	}
	return false
}

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
	Report(ctx context.Context, machine string, r Report) error
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

// Report is one report of a machine agent, or of the deployed OS:
// exactly one field is set.
type Report struct {
	Facts    json.RawMessage `json:"facts,omitempty"` // a JSON object, as the agent sent it
	Progress *Progress       `json:"progress,omitempty"`
	Result   *Result         `json:"result,omitempty"`
	OS       *OSReport       `json:"os,omitempty"`
	// TaskID and BootID name the boot the report belongs to, from the
	// token it came with; the region ignores a report of another boot.
	TaskID string `json:"taskID,omitempty"`
	BootID string `json:"bootID,omitempty"`
}

// OSReport is the deployed OS reporting in after its first boot: what
// cloud-init's phone_home posts (instance_id, hostname, fqdn, as a form),
// or the same as JSON with the boot ID. Every field is checked against a
// narrow alphabet before it is stored.
type OSReport struct {
	Hostname   string `json:"hostname,omitempty"`
	FQDN       string `json:"fqdn,omitempty"`
	InstanceID string `json:"instanceID,omitempty"`
	BootID     string `json:"bootID,omitempty"`
	Address    string `json:"-"` // the address the report came from, set by the server
}

// Progress is how far the agent is.
type Progress struct {
	Phase        string `json:"phase"`
	BytesWritten int64  `json:"bytesWritten,omitempty"`
	TotalBytes   int64  `json:"totalBytes,omitempty"`
}

// Result ends a task.
type Result struct {
	Success bool   `json:"success"`
	Reason  string `json:"reason,omitempty"`
}

// Task tells the machine agent what to do.
type Task struct {
	Machine  string             `json:"machine"`
	Purpose  string             `json:"purpose"`
	BootID   string             `json:"bootID,omitempty"`
	Image    *TaskImage         `json:"image,omitempty"`    // deploy
	RootDisk *spec.DiskSelector `json:"rootDisk,omitempty"` // deploy
	Erase    string             `json:"erase,omitempty"`    // erase: quick, full, secure
	// MetadataURL is the NoCloud seed (ds=nocloud;s=…) the deployed OS
	// reads its cloud-init data from; it carries the token.
	MetadataURL string `json:"metadataURL,omitempty"`
}

// TaskImage is the OS image to write, from the rack's image cache.
type TaskImage struct {
	Name   string `json:"name"`
	URL    string `json:"url"`
	SHA256 string `json:"sha256"`
	Format string `json:"format"` // raw, raw.gz, raw.zst
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
