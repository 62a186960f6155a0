package spec

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// APIVersion is the apiVersion every Kiln document carries.
const APIVersion = "kiln.dev/v1alpha1"

// The kinds of document Kiln reads.
const (
	KindRack    = "Rack"
	KindSubnet  = "Subnet"
	KindImage   = "Image"
	KindMachine = "Machine"
	KindProfile = "Profile"
)

// Kinds lists every kind in dependency order (a kind refers only to kinds
// before it, except Rack switch ports, which name machines).
var Kinds = []string{KindRack, KindSubnet, KindImage, KindProfile, KindMachine}

// Plural is the lower-case plural used in etcd keys and on the command line.
func Plural(kind string) string { return strings.ToLower(kind) + "s" }

// BMCDrivers are the power drivers a Machine may name. The power package
// registers one driver for each; a test there keeps the two lists equal.
var BMCDrivers = []string{"ipmi", "redfish", "webhook", "manual"}

// Header is the part every document shares.
type Header struct {
	APIVersion string   `yaml:"apiVersion" json:"apiVersion" doc:"Always kiln.dev/v1alpha1."`
	Kind       string   `yaml:"kind" json:"kind" doc:"Rack, Subnet, Image, Machine or Profile."`
	Metadata   Metadata `yaml:"metadata" json:"metadata"`
	// Origin is where the document was read from; it never comes from YAML.
	Origin Origin `yaml:"-" json:"origin"`
	ref    *docRef
}

// Metadata names an object.
type Metadata struct {
	Name        string            `yaml:"name" json:"name" doc:"Unique within its kind: lower-case letters, digits, '-' and '.', at most 63 characters."`
	Labels      map[string]string `yaml:"labels,omitempty" json:"labels,omitempty" doc:"Free-form key/value pairs; profiles select machines by them."`
	Annotations map[string]string `yaml:"annotations,omitempty" json:"annotations,omitempty" doc:"Free-form notes for people and tools; Kiln ignores them."`
}

// Origin records the file and line an object came from.
type Origin struct {
	File string `json:"file"`
	Line int    `json:"line"`
}

func (o Origin) String() string { return fmt.Sprintf("%s:%d", o.File, o.Line) }

// Object is implemented by every kind.
type Object interface {
	GetHeader() *Header
}

// GetHeader returns the shared header.
func (h *Header) GetHeader() *Header { return h }

// Rack is a group of machines served by one set of rack agents.
type Rack struct {
	Header `yaml:",inline"`
	Spec   RackSpec `yaml:"spec" json:"spec"`
}

// RackSpec describes a rack.
type RackSpec struct {
	Zone     string   `yaml:"zone,omitempty" json:"zone,omitempty" doc:"Failure domain or room the rack belongs to."`
	Switches []Switch `yaml:"switches,omitempty" json:"switches,omitempty" doc:"Top-of-rack switches and the machine interface cabled to each port. Validated against the Machines, and compared after commissioning with the LLDP neighbours the machine agent reports (see cabling)."`
	// Cabling says what a mismatch between the declared switch ports and
	// the LLDP neighbours seen at commissioning does.
	Cabling string `yaml:"cabling,omitempty" json:"cabling" enum:"warn,block" default:"warn" doc:"warn: a mismatch sets the CablingMismatch condition and an event; block: it also holds the machine's deployment until the cabling or the declaration is fixed."`
	// PowerDrift says what the region does when a machine's observed power
	// state contradicts its phase.
	PowerDrift string `yaml:"powerDrift,omitempty" json:"powerDrift" enum:"report,correct" default:"report" doc:"report: a machine found on or off against its phase gets the PowerDrift condition, an event and kiln_power_drift; correct: Kiln also powers it back (on for deployed, off for ready)."`
	// AllowPlaintextPasswords lets this rack's machines carry their BMC
	// password in the source as a bare string (an error otherwise).
	AllowPlaintextPasswords bool `yaml:"allowPlaintextPasswords,omitempty" json:"allowPlaintextPasswords,omitempty" doc:"Accept BMC passwords written as plain strings in this rack's Machines (for labs). They are moved out of the desired state into keys only the region and this rack can read; fromFile or fromEnv stay the recommended way."`
}

// Switch is a top-of-rack switch and what is cabled to it.
type Switch struct {
	Name      string       `yaml:"name" json:"name" doc:"The switch's system name as LLDP reports it."`
	ChassisID string       `yaml:"chassisID,omitempty" json:"chassisID,omitempty" doc:"LLDP chassis ID, usually a MAC address."`
	Ports     []SwitchPort `yaml:"ports,omitempty" json:"ports,omitempty"`
}

// SwitchPort says which machine interface a switch port is cabled to.
type SwitchPort struct {
	Name      string `yaml:"name" json:"name" doc:"Port name as LLDP reports it, e.g. Ethernet1/12."`
	Machine   string `yaml:"machine" json:"machine" doc:"Machine cabled to this port."`
	Interface string `yaml:"interface" json:"interface" doc:"Name of that machine's interface."`
}

// Subnet is an IPv4 network a rack serves.
type Subnet struct {
	Header `yaml:",inline"`
	Spec   SubnetSpec `yaml:"spec" json:"spec"`
}

// Subnet modes.
const (
	ModeManaged = "managed"
	ModeProxy   = "proxy"
	ModeRelay   = "relay"
)

// SubnetSpec describes a subnet.
type SubnetSpec struct {
	CIDR          string    `yaml:"cidr" json:"cidr" doc:"IPv4 network, e.g. 10.0.0.0/24."`
	Rack          string    `yaml:"rack" json:"rack" doc:"The rack whose agents serve DHCP and boot on this subnet."`
	Mode          string    `yaml:"mode,omitempty" json:"mode" enum:"managed,proxy,relay" doc:"managed: Kiln is the DHCP server; proxy: proxyDHCP beside an existing server; relay: reached through a DHCP relay (giaddr)." default:"managed"`
	Gateway       string    `yaml:"gateway,omitempty" json:"gateway,omitempty" doc:"Default router handed out by DHCP."`
	DNS           []string  `yaml:"dns,omitempty" json:"dns,omitempty" doc:"DNS servers handed out by DHCP."`
	Domain        string    `yaml:"domain,omitempty" json:"domain,omitempty" doc:"DNS search domain."`
	MTU           int       `yaml:"mtu,omitempty" json:"mtu" doc:"Link MTU." default:"1500"`
	VLAN          int       `yaml:"vlan,omitempty" json:"vlan,omitempty" doc:"802.1Q VLAN ID, 0 for untagged."`
	DynamicRange  *IPRange  `yaml:"dynamicRange,omitempty" json:"dynamicRange,omitempty" doc:"Addresses handed to unknown MACs so they can be discovered."`
	Reserved      []IPRange `yaml:"reserved,omitempty" json:"reserved,omitempty" doc:"Addresses Kiln never hands out or allocates."`
	LeaseTime     Duration  `yaml:"leaseTime,omitempty" json:"leaseTime" doc:"DHCP lease time, e.g. 1h." default:"1h"`
	AllowedRelays []string  `yaml:"allowedRelays,omitempty" json:"allowedRelays,omitempty" doc:"IPv4 addresses of the DHCP relays allowed to relay for this subnet: when set, a relayed packet whose giaddr is in this subnet is accepted only from one of them (the UDP sender). Empty: any sender whose giaddr is in the subnet."`
}

// IPRange is an inclusive range of IPv4 addresses.
type IPRange struct {
	Start string `yaml:"start" json:"start"`
	End   string `yaml:"end" json:"end"`
}

func (r IPRange) String() string { return r.Start + "-" + r.End }

// Image is an ephemeral boot image (kernel and initramfs) or an OS disk image.
type Image struct {
	Header `yaml:",inline"`
	Spec   ImageSpec `yaml:"spec" json:"spec"`
}

// Image purposes.
const (
	PurposeEphemeral = "ephemeral"
	PurposeOS        = "os"
)

// ImageSpec describes an image.
type ImageSpec struct {
	Purpose string    `yaml:"purpose" json:"purpose" enum:"ephemeral,os" doc:"ephemeral: kernel and initramfs booted into RAM to commission, deploy and erase; os: a disk image written at deploy."`
	Arch    string    `yaml:"arch,omitempty" json:"arch" enum:"amd64,arm64" default:"amd64"`
	Kernel  *Artifact `yaml:"kernel,omitempty" json:"kernel,omitempty" doc:"Ephemeral images: the kernel."`
	Initrd  *Artifact `yaml:"initrd,omitempty" json:"initrd,omitempty" doc:"Ephemeral images: the initramfs."`
	Disk    *Artifact `yaml:"disk,omitempty" json:"disk,omitempty" doc:"OS images: the disk image."`
	Format  string    `yaml:"format,omitempty" json:"format,omitempty" enum:"raw,raw.gz,raw.zst" doc:"OS images: disk image format; inferred from the URL's suffix when absent."`
	Cmdline string    `yaml:"cmdline,omitempty" json:"cmdline,omitempty" doc:"Extra kernel command line for ephemeral images."`
	Confirm string    `yaml:"confirm,omitempty" json:"confirm,omitempty" enum:"os,none" doc:"OS images: how a deploy is confirmed. os (the default): the deployed OS reports in through cloud-init's phone_home, and the machine is deployed only then; none: the image cannot report (no cloud-init), and deployed means only that the disk boot was requested."`
}

// Deploy confirmations (ImageSpec.Confirm).
const (
	ConfirmOS   = "os"
	ConfirmNone = "none"
)

// ConfirmsByOS reports whether a deploy of the image waits for the OS to
// report in.
func (s *ImageSpec) ConfirmsByOS() bool { return s.Confirm != ConfirmNone }

// Artifact is a file Kiln fetches, verifies and caches.
type Artifact struct {
	URL    string `yaml:"url" json:"url" doc:"http, https or file URL."`
	SHA256 string `yaml:"sha256" json:"sha256" doc:"Lower-case hex SHA-256 of the file; Kiln never serves a file that does not match."`
}

// Machine is one server Kiln manages.
type Machine struct {
	Header `yaml:",inline"`
	Spec   MachineSpec `yaml:"spec" json:"spec"`
}

// Desired states.
const (
	StateReady    = "ready"
	StateDeployed = "deployed"
)

// MachineSpec describes a machine and what should become of it.
type MachineSpec struct {
	Rack                 string        `yaml:"rack,omitempty" json:"rack" doc:"The rack the machine is in; defaults to the rack serving its boot interface's subnet."`
	Profile              string        `yaml:"profile,omitempty" json:"profile,omitempty" doc:"Profile whose machine defaults apply; when absent, the profile whose selector matches the machine's labels, if any."`
	Arch                 string        `yaml:"arch,omitempty" json:"arch" enum:"amd64,arm64" default:"amd64"`
	Firmware             string        `yaml:"firmware,omitempty" json:"firmware" enum:"bios,uefi" default:"uefi"`
	Interfaces           []Interface   `yaml:"interfaces,omitempty" json:"interfaces,omitempty" doc:"Physical NICs; the first (or the one marked boot) network-boots."`
	Bonds                []Bond        `yaml:"bonds,omitempty" json:"bonds,omitempty" doc:"Bonds configured in the deployed OS."`
	VLANs                []VLAN        `yaml:"vlans,omitempty" json:"vlans,omitempty" doc:"VLAN interfaces configured in the deployed OS."`
	BMC                  *BMC          `yaml:"bmc,omitempty" json:"bmc,omitempty"`
	RootDisk             *DiskSelector `yaml:"rootDisk,omitempty" json:"rootDisk,omitempty" doc:"Which disk the OS image is written to."`
	State                string        `yaml:"state,omitempty" json:"state" enum:"ready,deployed" default:"ready" doc:"ready: commissioned and idle; deployed: running the image."`
	Image                string        `yaml:"image,omitempty" json:"image,omitempty" doc:"OS image to deploy; required when state is deployed."`
	UserData             string        `yaml:"userData,omitempty" json:"userData,omitempty" doc:"cloud-init user-data for the deployed OS."`
	UserDataFile         string        `yaml:"userDataFile,omitempty" json:"userDataFile,omitempty" doc:"File holding the user-data, relative to this document's file."`
	Zone                 string        `yaml:"zone,omitempty" json:"zone,omitempty"`
	Pool                 string        `yaml:"pool,omitempty" json:"pool,omitempty"`
	Maintenance          *bool         `yaml:"maintenance,omitempty" json:"maintenance,omitempty" doc:"true pauses every action on this machine."`
	Erase                string        `yaml:"erase,omitempty" json:"erase" enum:"none,quick,full,secure" default:"none" doc:"How disks are erased on release."`
	CommissionGeneration int64         `yaml:"commissionGeneration,omitempty" json:"commissionGeneration,omitempty" doc:"Raise to commission the machine again."`
	DeployGeneration     int64         `yaml:"deployGeneration,omitempty" json:"deployGeneration,omitempty" doc:"Raise to redeploy a deployed machine (its disk is rewritten)."`
	Adopt                bool          `yaml:"adopt,omitempty" json:"adopt,omitempty" doc:"With state: deployed and an image, a machine Kiln has never seen is recorded as deployed with that image: no power action, no boot, its disk untouched; Kiln watches its power from then on. Ignored once the machine has a status."`
}

// InMaintenance reports whether reconciliation is paused.
func (s *MachineSpec) InMaintenance() bool { return s.Maintenance != nil && *s.Maintenance }

// BootInterface returns the interface that network-boots, or nil.
func (s *MachineSpec) BootInterface() *Interface {
	for i := range s.Interfaces {
		if s.Interfaces[i].Boot {
			return &s.Interfaces[i]
		}
	}
	if len(s.Interfaces) > 0 {
		return &s.Interfaces[0]
	}
	return nil
}

// Interface is a physical NIC.
type Interface struct {
	Name   string `yaml:"name" json:"name" doc:"Interface name in the deployed OS, e.g. eno1."`
	MAC    string `yaml:"mac" json:"mac" doc:"Hardware address, e.g. 52:54:00:12:34:56."`
	Subnet string `yaml:"subnet,omitempty" json:"subnet,omitempty"`
	IP     string `yaml:"ip,omitempty" json:"ip,omitempty" doc:"Static address in the subnet; empty or auto to have one allocated once and kept."`
	Boot   bool   `yaml:"boot,omitempty" json:"boot,omitempty" doc:"Network-boot from this interface (default: the first)."`
	MTU    int    `yaml:"mtu,omitempty" json:"mtu,omitempty"`
}

// Bond aggregates interfaces in the deployed OS.
type Bond struct {
	Name       string   `yaml:"name" json:"name"`
	Interfaces []string `yaml:"interfaces" json:"interfaces"`
	Mode       string   `yaml:"mode,omitempty" json:"mode" enum:"balance-rr,active-backup,balance-xor,broadcast,802.3ad,balance-tlb,balance-alb" default:"active-backup"`
	Subnet     string   `yaml:"subnet,omitempty" json:"subnet,omitempty"`
	IP         string   `yaml:"ip,omitempty" json:"ip,omitempty"`
	MTU        int      `yaml:"mtu,omitempty" json:"mtu,omitempty"`
}

// VLAN is a tagged interface in the deployed OS.
type VLAN struct {
	Name   string `yaml:"name,omitempty" json:"name" doc:"Defaults to <link>.<id>."`
	ID     int    `yaml:"id" json:"id"`
	Link   string `yaml:"link" json:"link" doc:"Interface or bond the VLAN rides on."`
	Subnet string `yaml:"subnet,omitempty" json:"subnet,omitempty"`
	IP     string `yaml:"ip,omitempty" json:"ip,omitempty"`
}

// BMC says how Kiln controls a machine's power.
type BMC struct {
	Driver   string            `yaml:"driver" json:"driver" enum:"ipmi,redfish,webhook,manual"`
	Address  string            `yaml:"address,omitempty" json:"address,omitempty" doc:"host[:port] for ipmi, URL or host for redfish, base URL for webhook."`
	Username string            `yaml:"username,omitempty" json:"username,omitempty"`
	Password *SecretRef        `yaml:"password,omitempty" json:"password,omitempty" merge:"replace"`
	Insecure *bool             `yaml:"insecure,omitempty" json:"insecure,omitempty" doc:"Skip TLS verification (redfish, webhook). Not for production."`
	Options  map[string]string `yaml:"options,omitempty" json:"options,omitempty" doc:"Driver-specific settings, e.g. cipherSuite, systemID, caFile."`
}

// SkipVerify reports whether TLS verification is turned off.
func (b *BMC) SkipVerify() bool { return b != nil && b.Insecure != nil && *b.Insecure }

// SecretRef points at a secret outside git. A plain string is an error
// unless the machine's Rack sets allowPlaintextPasswords: secrets do not
// belong in a repository.
type SecretRef struct {
	FromFile string `yaml:"fromFile,omitempty" json:"fromFile,omitempty" doc:"Path of a file on the rack agent's host holding the secret."`
	FromEnv  string `yaml:"fromEnv,omitempty" json:"fromEnv,omitempty" doc:"Environment variable of the rack agent holding the secret."`
	// Value is a plaintext secret given as a bare string (allowed only
	// where the Rack opts in). Apply moves it out of the desired state
	// into the rack's secrets (leaving FromSecret set); output redacts it.
	Value string `yaml:"-" json:"value,omitempty"`
	// FromSecret marks, in the stored desired state, a plaintext
	// password that was moved into the rack's secrets; the rack agent
	// fills Value back in from there. Never written in the source.
	FromSecret bool `yaml:"-" json:"fromSecret,omitempty"`
}

func (s *SecretRef) parseScalar(v string) error { s.Value = v; return nil }

// Plaintext reports whether the secret was written into the document.
func (s *SecretRef) Plaintext() bool { return s != nil && s.Value != "" }

// DiskSelector chooses the root disk among those commissioning found.
type DiskSelector struct {
	Path       string `yaml:"path,omitempty" json:"path,omitempty" doc:"A /dev/disk/by-path or by-id name."`
	Serial     string `yaml:"serial,omitempty" json:"serial,omitempty"`
	Model      string `yaml:"model,omitempty" json:"model,omitempty"`
	MinSize    Size   `yaml:"minSize,omitempty" json:"minSize,omitempty" doc:"e.g. 100G, 1.5TiB."`
	MaxSize    Size   `yaml:"maxSize,omitempty" json:"maxSize,omitempty"`
	Rotational *bool  `yaml:"rotational,omitempty" json:"rotational,omitempty"`
	Prefer     string `yaml:"prefer,omitempty" json:"prefer,omitempty" enum:"first,smallest,largest" default:"first" doc:"Among matching disks."`
}

// LabelSelector matches labels.
type LabelSelector struct {
	MatchLabels map[string]string `yaml:"matchLabels" json:"matchLabels"`
}

// Matches reports whether every label in the selector is present.
func (s *LabelSelector) Matches(labels map[string]string) bool {
	if s == nil || len(s.MatchLabels) == 0 {
		return false
	}
	for k, v := range s.MatchLabels {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// Profile holds machine defaults shared by many machines.
type Profile struct {
	Header `yaml:",inline"`
	Spec   ProfileSpec `yaml:"spec" json:"spec"`
}

// ProfileSpec is a selector and the defaults it applies.
type ProfileSpec struct {
	Selector *LabelSelector `yaml:"selector,omitempty" json:"selector,omitempty" doc:"Machines with these labels use this profile unless they name one."`
	Machine  MachineSpec    `yaml:"machine" json:"machine" doc:"Defaults for the machines' spec; a machine's own fields win."`
	Rollout  *Rollout       `yaml:"rollout,omitempty" json:"rollout,omitempty" doc:"When set, a change of the image or deployGeneration of this profile's machines redeploys the deployed ones, a few at a time; without it the change is only reported (ImageDrift)."`
}

// Rollout bounds a rolling redeploy of a profile's deployed machines.
type Rollout struct {
	MaxUnavailable int `yaml:"maxUnavailable" json:"maxUnavailable" doc:"At most this many of the profile's deployed machines are not confirmed deployed at once (failed or off ones count)."`
}

// Duration is a time.Duration written as "90s", "1h".
type Duration struct{ time.Duration }

func (d *Duration) parseScalar(v string) error {
	x, err := time.ParseDuration(v)
	if err != nil {
		return fmt.Errorf("%q is not a duration (use e.g. 30m, 1h)", v)
	}
	if x < 0 {
		return fmt.Errorf("%q is negative", v)
	}
	d.Duration = x
	return nil
}

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads the string form.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	return d.parseScalar(s)
}

// Size is a number of bytes written as 512M, 100G, 1.5TiB or plain bytes.
type Size int64

var sizeUnits = []struct {
	suffix string
	mult   float64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12}, {"B", 1},
}

// ParseSize parses a size such as 100G or 1.5TiB.
func ParseSize(v string) (Size, error) {
	s := strings.TrimSpace(v)
	mult := 1.0
	for _, u := range sizeUnits {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || !(f >= 0) || f*mult > 1<<62 { // !(f >= 0) catches NaN
		return 0, fmt.Errorf("%q is not a size (use e.g. 500G, 1.5TiB)", v)
	}
	return Size(f * mult), nil
}

func (z *Size) parseScalar(v string) error {
	x, err := ParseSize(v)
	*z = x
	return err
}

// UnmarshalJSON accepts bytes as a number.
func (z *Size) UnmarshalJSON(b []byte) error {
	var n int64
	if err := json.Unmarshal(b, &n); err != nil {
		return err
	}
	*z = Size(n)
	return nil
}
