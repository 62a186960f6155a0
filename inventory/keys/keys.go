// Package keys is Kiln's etcd key layout: every key Kiln reads or
// writes, and who may touch it, in one place. No other code spells a key
// prefix or parses a key: it asks a Layout (inventory.Store.Keys).
//
// Everything a rack agent writes lives under a prefix that names its
// rack, so that etcd's role-based access control (which grants single
// keys and prefixes only) can confine a rack's credentials to its own
// keys (RackGrants). Machine and rack names are validated (lower-case
// letters, digits, '-' and '.'), so no name contains '/' and no prefix of
// one rack is a prefix of another's.
//
// docs/keys.md lists every key family with its writer, readers, lifetime
// and the roles that may touch it.
package keys

import (
	"fmt"
	"strings"
	"time"
)

// DefaultPrefix is where Kiln keeps its keys.
const DefaultPrefix = "/kiln/"

// Layout computes keys under one prefix.
type Layout struct{ prefix string }

// New returns the layout under prefix (DefaultPrefix if ""); a missing
// trailing '/' is added.
func New(prefix string) Layout {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return Layout{prefix: prefix}
}

// Prefix is the layout's root prefix, ending in '/'.
func (l Layout) Prefix() string { return l.prefix }

// Region-owned keys.

// Desired is the prefix of everything applied from the source.
func (l Layout) Desired() string { return l.prefix + "desired/" }

// DesiredPointer is the pointer to the generation that holds the applied
// source revision.
func (l Layout) DesiredPointer() string { return l.prefix + "desired/current" }

// GenIndex is a generation's index entry; gen "" is the prefix of all.
func (l Layout) GenIndex(gen string) string { return l.prefix + "desired/gens/" + gen }

// SplitGenIndex cuts a key made by GenIndex into its generation.
func (l Layout) SplitGenIndex(key string) (gen string, ok bool) {
	gen, ok = strings.CutPrefix(key, l.GenIndex(""))
	return gen, ok && gen != ""
}

// Gen is the prefix of a generation's objects, each at
// Gen(gen)+GenObject(segment, name).
func (l Layout) Gen(gen string) string { return l.prefix + "desired/g/" + gen + "/" }

// GenSegment is the prefix of one segment (a kind's folder) of a
// generation.
func (l Layout) GenSegment(gen, segment string) string { return l.Gen(gen) + segment + "/" }

// UnmanagedSegment is the folder, inside a generation, of the markers of
// machines removed from the source. Every other folder is a kind's
// plural (spec.Plural).
const UnmanagedSegment = "unmanaged"

// GenObject is an object's key relative to its generation's prefix.
func GenObject(segment, name string) string { return segment + "/" + name }

// SplitGenObject cuts a key made by GenObject into segment and name.
func SplitGenObject(rel string) (segment, name string, ok bool) {
	segment, name, ok = strings.Cut(rel, "/")
	return segment, name, ok && segment != "" && name != ""
}

// SplitDesired cuts a full key of a generation's object into its
// generation, segment and name; ok is false for any other key (the
// pointer, an index entry).
func (l Layout) SplitDesired(key string) (gen, segment, name string, ok bool) {
	rest, found := strings.CutPrefix(key, l.prefix+"desired/g/")
	if !found {
		return "", "", "", false
	}
	gen, rel, found := strings.Cut(rest, "/")
	if !found || gen == "" {
		return "", "", "", false
	}
	segment, name, ok = SplitGenObject(rel)
	return gen, segment, name, ok
}

// Source is a source's status; name "" is the prefix of all.
func (l Layout) Source(name string) string { return l.prefix + "sources/" + name }

// APIToken is the record of one region API token (its hash, never the
// token); id "" is the prefix of all.
func (l Layout) APIToken(id string) string { return l.prefix + "apitokens/" + id }

// SplitAPIToken cuts a key made by APIToken into the token's ID.
func (l Layout) SplitAPIToken(key string) (id string, ok bool) {
	id, ok = strings.CutPrefix(key, l.APIToken(""))
	return id, ok && id != ""
}

// SyncRequest is where a source's "poll now" is asked for (the region
// API writes it on any server; the leader's syncer acts on it).
func (l Layout) SyncRequest(source string) string { return l.prefix + "syncrequests/" + source }

// Elections is the prefix of every election, the region's and the racks'.
func (l Layout) Elections() string { return l.prefix + "election/" }

// RegionElection is where region servers campaign.
func (l Layout) RegionElection() string { return l.Elections() + "region/" }

// MachineStatus is a machine's status; machine "" is the prefix of all.
func (l Layout) MachineStatus(machine string) string { return l.prefix + "status/machines/" + machine }

// SplitMachineStatus cuts a key made by MachineStatus into the machine.
func (l Layout) SplitMachineStatus(key string) (machine string, ok bool) {
	machine, ok = strings.CutPrefix(key, l.MachineStatus(""))
	return machine, ok && machine != ""
}

// Events is where a machine's events live; machine "" lists all.
func (l Layout) Events(machine string) string {
	if machine == "" {
		return l.prefix + "events/"
	}
	return l.prefix + "events/" + machine + "/"
}

// Event is the key of one event of machine at time at: time-ordered
// within the machine; seq orders events of the same instant.
func (l Layout) Event(machine string, at time.Time, seq int) string {
	return fmt.Sprintf("%s%020d.%03d", l.Events(machine), at.UnixNano(), seq)
}

// Per-rack keys. For each kind, rack "" is the prefix of every rack's
// keys (what the region watches), and machine "" the prefix of one
// rack's.

func (l Layout) kind(kind, rack, rest string) string {
	if rack == "" {
		return l.prefix + kind + "/"
	}
	return l.prefix + kind + "/" + rack + "/" + rest
}

// The per-rack kinds, as they appear in keys.
const (
	tasks       = "tasks"
	secrets     = "secrets"
	tokens      = "tokens"
	reports     = "reports"
	timeline    = "timeline"
	discovered  = "discovered"
	leases      = "leases"
	imageStatus = "imagestatus"
	powerState  = "powerstate"
)

func (l Layout) Task(rack, machine string) string       { return l.kind(tasks, rack, machine) }
func (l Layout) Secret(rack, machine string) string     { return l.kind(secrets, rack, machine) }
func (l Layout) RackElection(rack string) string        { return l.kind("election/rack", rack, "") }
func (l Layout) Token(rack, machine string) string      { return l.kind(tokens, rack, machine) }
func (l Layout) Report(rack, machine string) string     { return l.kind(reports, rack, machine) }
func (l Layout) Timeline(rack, machine string) string   { return l.kind(timeline, rack, machine) }
func (l Layout) Discovered(rack, mac string) string     { return l.kind(discovered, rack, mac) }
func (l Layout) ImageStatus(rack, image string) string  { return l.kind(imageStatus, rack, image) }
func (l Layout) PowerState(rack, machine string) string { return l.kind(powerState, rack, machine) }

// Lease is one DHCP lease; subnet "" is the prefix of the rack's leases.
func (l Layout) Lease(rack, subnet, ip string) string {
	if rack == "" || subnet == "" {
		return l.kind(leases, rack, "")
	}
	return l.kind(leases, rack, subnet+"/"+ip)
}

// split cuts a per-rack key of kind (as produced above with rack and
// name) into its rack and the rest; ok is false for any other key.
func (l Layout) split(kind, key string) (rack, rest string, ok bool) {
	s, found := strings.CutPrefix(key, l.prefix+kind+"/")
	if !found {
		return "", "", false
	}
	rack, rest, ok = strings.Cut(s, "/")
	return rack, rest, ok && rack != "" && rest != ""
}

// splitName is split for kinds whose rest is a single name.
func (l Layout) splitName(kind, key string) (rack, name string, ok bool) {
	rack, name, ok = l.split(kind, key)
	return rack, name, ok && !strings.Contains(name, "/")
}

// SplitTask cuts a key made by Task into its rack and machine.
func (l Layout) SplitTask(key string) (rack, machine string, ok bool) {
	return l.splitName(tasks, key)
}

// SplitSecret cuts a key made by Secret into its rack and machine.
func (l Layout) SplitSecret(key string) (rack, machine string, ok bool) {
	return l.split(secrets, key)
}

// SplitReport cuts a key made by Report into its rack and machine.
func (l Layout) SplitReport(key string) (rack, machine string, ok bool) {
	return l.split(reports, key)
}

// SplitDiscovered cuts a key made by Discovered into its rack and MAC.
func (l Layout) SplitDiscovered(key string) (rack, mac string, ok bool) {
	return l.split(discovered, key)
}

// SplitImageStatus cuts a key made by ImageStatus into its rack and
// image.
func (l Layout) SplitImageStatus(key string) (rack, image string, ok bool) {
	return l.splitName(imageStatus, key)
}

// SplitPowerState cuts a key made by PowerState into its rack and
// machine.
func (l Layout) SplitPowerState(key string) (rack, machine string, ok bool) {
	return l.splitName(powerState, key)
}

// Grant is one etcd permission: a key prefix and whether it may be
// written.
type Grant struct {
	Prefix string
	Write  bool
}

// RackGrants is what a rack's etcd role needs: its own per-rack keys
// read-write, desired state and machine statuses read-only (to know what
// to serve), its own secrets read-only. Nothing of other racks but their
// desired state.
func (l Layout) RackGrants(rack string) []Grant {
	return []Grant{
		{l.Desired(), false},
		{l.MachineStatus(""), false},
		{l.Secret(rack, ""), false},
		{l.Task(rack, ""), true},
		{l.RackElection(rack), true},
		{l.Token(rack, ""), true},
		{l.Report(rack, ""), true},
		{l.Timeline(rack, ""), true},
		{l.Discovered(rack, ""), true},
		{l.Lease(rack, "", ""), true},
		{l.ImageStatus(rack, ""), true},
		{l.PowerState(rack, ""), true},
	}
}

// RegionGrants is what the region's role needs: everything under the
// prefix.
func (l Layout) RegionGrants() []Grant { return []Grant{{l.prefix, true}} }

// ViewerGrants is a read-only role for dashboards and the CLI's get and
// describe: everything except secrets and tokens.
func (l Layout) ViewerGrants() []Grant {
	return []Grant{
		{l.Desired(), false},
		{l.Source(""), false},
		{l.MachineStatus(""), false},
		{l.Events(""), false},
		{l.Task("", ""), false},
		{l.Report("", ""), false},
		{l.Timeline("", ""), false},
		{l.Discovered("", ""), false},
		{l.Lease("", "", ""), false},
		{l.ImageStatus("", ""), false},
		{l.PowerState("", ""), false},
		{l.Elections(), false},
	}
}
