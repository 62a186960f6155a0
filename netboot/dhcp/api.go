package dhcp

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"
)

// Subnet modes (the same words as spec.Subnet's mode).
const (
	ModeManaged = "managed" // Kiln is the DHCP server
	ModeProxy   = "proxy"   // proxyDHCP: boot options only, beside the site's DHCP server
	ModeRelay   = "relay"   // reached through a DHCP relay (giaddr)
)

// Range is an inclusive range of addresses.
type Range struct{ Start, End netip.Addr }

// Contains reports whether a is in the range.
func (r Range) Contains(a netip.Addr) bool { return r.Start.Compare(a) <= 0 && a.Compare(r.End) <= 0 }

// Subnet is a subnet the rack serves, as DHCP needs it.
type Subnet struct {
	Name      string
	Prefix    netip.Prefix
	Mode      string
	Gateway   netip.Addr // zero: none
	DNS       []netip.Addr
	Domain    string
	MTU       int
	LeaseTime time.Duration
	Dynamic   *Range // handed to unknown MACs (discovery); nil: unknown MACs are ignored
	Reserved  []Range
	// AllowedRelays, when not empty, are the only UDP senders whose
	// relayed packets (giaddr in this subnet) are accepted.
	AllowedRelays []netip.Addr
}

// Host is one interface of a known machine.
type Host struct {
	Machine  string
	MAC      net.HardwareAddr
	Subnet   string
	IP       netip.Addr // zero: allocated once from the subnet and kept
	Hostname string
}

// BootConfig says what network-booting clients are told.
type BootConfig struct {
	// ScriptURL is the iPXE script URL given to clients whose user class
	// is "iPXE". {server} is replaced by the address of the interface the
	// request came in on (or the relay-facing address), {mac} by the
	// client's MAC (aa:bb:...), {ip} by its address.
	ScriptURL string // default "http://{server}:8080/boot/{mac}/script.ipxe"
	// HTTPBootURL is given to UEFI HTTP boot clients (vendor class
	// HTTPClient, arch 16 or 19) as their boot file.
	HTTPBootURL string // default "http://{server}:8080/ipxe/ipxe.efi"
	// HTTPBootARM64URL is given to UEFI arm64 HTTP boot clients (arch
	// 19) instead of HTTPBootURL.
	HTTPBootARM64URL string // default "http://{server}:8080/ipxe/snp-arm64.efi"
	BIOSFile         string // TFTP boot file for BIOS PXE (arch 0), default "undionly.kpxe"
	EFIFile          string // TFTP boot file for UEFI x64 PXE (arch 7, 9), default "ipxe.efi"
	EFIARM64         string // TFTP boot file for UEFI arm64 PXE (arch 11), default "snp-arm64.efi"
	// TFTPServer is the next-server (siaddr); zero: the serving address.
	TFTPServer netip.Addr
}

// Config is everything the server serves; Server.Update swaps it whole.
type Config struct {
	Rack    string
	Subnets []Subnet
	Hosts   []Host
	Boot    BootConfig
}

// Lease is an address bound to a MAC on a subnet.
type Lease struct {
	Subnet   string     `json:"subnet"`
	IP       netip.Addr `json:"ip"`
	MAC      string     `json:"mac"`               // lower-case, colon-separated
	Machine  string     `json:"machine,omitempty"` // empty for an unknown (discovered) MAC
	Hostname string     `json:"hostname,omitempty"`
	// Reserved leases belong to a Machine interface (its static IP, or
	// the one allocated for it once); they never expire. Their Expires
	// is still the end of the lease time last given to the client.
	Reserved bool      `json:"reserved,omitempty"`
	Expires  time.Time `json:"expires,omitzero"`
	Updated  time.Time `json:"updated"`
}

// Ended reports whether the lease was ended (released, declined, or
// replaced by another address of the same MAC): the server saves such a
// lease with Reserved false and Expires equal to Updated. A store may
// delete it; the address is free.
func (l Lease) Ended() bool { return !l.Reserved && !l.Expires.After(l.Updated) }

// LeaseStore persists leases. The rack agent implements it on etcd with
// the leader's lease as a fencing token.
type LeaseStore interface {
	// Save stores a batch of leases durably and returns only when they
	// are stored, or with an error (then none of the batch may be relied
	// on). ErrNotLeader means this agent must stop serving.
	//
	// A batch is in the order the server decided; the same address or
	// MAC may appear more than once, the last one wins. Saves never
	// overlap: the server calls Save again only after it returned.
	Save(ctx context.Context, leases []Lease) error
}

// Event types recorded on a machine's boot timeline.
const (
	EventSeen       = "dhcp-seen"       // a DISCOVER or REQUEST arrived
	EventOffered    = "dhcp-offered"    // an OFFER was sent
	EventAcked      = "dhcp-acked"      // an ACK was sent
	EventNaked      = "dhcp-nak"        // a NAK was sent
	EventDiscovered = "dhcp-discovered" // an unknown MAC was given a dynamic address
	EventDeclined   = "dhcp-declined"   // the client said the address is in use
	EventReleased   = "dhcp-released"
	// Pool events carry no MAC: they are the rack's, about a subnet.
	EventPoolLow       = "dhcp-pool-low"       // the dynamic range passed 90% used
	EventPoolExhausted = "dhcp-pool-exhausted" // the dynamic range has no free address
)

// Event is one DHCP happening, for the boot timeline and discovery.
type Event struct {
	Time        time.Time  `json:"time"`
	Type        string     `json:"type"`
	MAC         string     `json:"mac"`
	Machine     string     `json:"machine,omitempty"`
	Subnet      string     `json:"subnet,omitempty"`
	IP          netip.Addr `json:"ip,omitzero"`
	Arch        string     `json:"arch,omitempty"` // from option 93: bios, uefi-x64, uefi-x64-http, uefi-arm64, …
	VendorClass string     `json:"vendorClass,omitempty"`
	UserClass   string     `json:"userClass,omitempty"`
	CircuitID   string     `json:"circuitID,omitempty"` // option 82, from a relay
	Relay       netip.Addr `json:"relay,omitzero"`
}

// EventSink receives events. Record must not block: the rack agent
// batches them to etcd.
type EventSink interface{ Record(Event) }

// ErrNotLeader is returned by a LeaseStore when this agent is no longer
// the rack's leader: its writes are fenced off and it must stop serving.
var ErrNotLeader = errors.New("not the rack leader")
