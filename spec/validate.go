package spec

import (
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"net/url"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Inventory is a validated, resolved set of objects: profiles and defaults
// are applied to every machine, user-data files are read in.
type Inventory struct {
	Racks    map[string]*Rack
	Subnets  map[string]*Subnet
	Images   map[string]*Image
	Profiles map[string]*Profile
	Machines map[string]*Machine
}

// NewInventory returns an empty inventory.
func NewInventory() *Inventory {
	return &Inventory{
		Racks:    map[string]*Rack{},
		Subnets:  map[string]*Subnet{},
		Images:   map[string]*Image{},
		Profiles: map[string]*Profile{},
		Machines: map[string]*Machine{},
	}
}

// Objects returns every object in kind order, then by name.
func (inv *Inventory) Objects() []Object {
	var out []Object
	for _, k := range Kinds {
		out = append(out, inv.OfKind(k)...)
	}
	return out
}

// OfKind returns the objects of one kind sorted by name.
func (inv *Inventory) OfKind(kind string) []Object {
	var out []Object
	add := func(names []string, get func(string) Object) {
		for _, n := range names {
			out = append(out, get(n))
		}
	}
	switch kind {
	case KindRack:
		add(sortedKeys(inv.Racks), func(n string) Object { return inv.Racks[n] })
	case KindSubnet:
		add(sortedKeys(inv.Subnets), func(n string) Object { return inv.Subnets[n] })
	case KindImage:
		add(sortedKeys(inv.Images), func(n string) Object { return inv.Images[n] })
	case KindProfile:
		add(sortedKeys(inv.Profiles), func(n string) Object { return inv.Profiles[n] })
	case KindMachine:
		add(sortedKeys(inv.Machines), func(n string) Object { return inv.Machines[n] })
	}
	return out
}

// Len counts the objects.
func (inv *Inventory) Len() int {
	return len(inv.Racks) + len(inv.Subnets) + len(inv.Images) + len(inv.Profiles) + len(inv.Machines)
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$`)

// validator collects problems while building an inventory.
type validator struct {
	fsys     fs.FS
	inv      *Inventory
	problems Problems
	// subnetInfo holds the parsed form of each valid subnet.
	subnetInfo map[*Subnet]*subnetInfo
	// userDataProfile names the profile a machine's userDataFile came
	// from: the path is relative to that profile's file.
	userDataProfile map[*Machine]*Profile
}

func (v *validator) report(sev Severity, o Object, path, format string, args ...any) {
	h := o.GetHeader()
	if !h.decoded(path) {
		return // decoding reported this value already
	}
	p := Problem{Severity: sev, Field: path, Message: fmt.Sprintf(format, args...), doc: h.ref, path: path}
	if h.ref == nil { // built in code, not read from a file
		p.Pos = Pos{File: h.Origin.File, Line: h.Origin.Line}
	}
	v.problems = append(v.problems, p)
}

func (v *validator) errorf(o Object, path, format string, args ...any) {
	v.report(Error, o, path, format, args...)
}

func (v *validator) warnf(o Object, path, format string, args ...any) {
	v.report(Warning, o, path, format, args...)
}

// build resolves and validates decoded objects into an Inventory.
func build(fsys fs.FS, objects []located) (*Inventory, Problems) {
	v := &validator{fsys: fsys, inv: NewInventory(), subnetInfo: map[*Subnet]*subnetInfo{}, userDataProfile: map[*Machine]*Profile{}}
	seen := map[string]Object{}
	for _, lo := range objects {
		o := lo.Object
		h := o.GetHeader()
		switch {
		case h.Metadata.Name == "":
			v.errorf(o, "metadata.name", "required")
			continue
		case !nameRE.MatchString(h.Metadata.Name):
			v.errorf(o, "metadata.name", "%q: use lower-case letters, digits, '-' and '.', at most 63 characters, starting and ending with a letter or digit", h.Metadata.Name)
			continue
		}
		if h.Kind == KindMachine && strings.HasPrefix(h.Metadata.Name, ReservedMachinePrefix) {
			v.errorf(o, "metadata.name", "%q: names starting %q are reserved for machines Kiln discovers on the network; choose another name", h.Metadata.Name, ReservedMachinePrefix)
			continue
		}
		key := h.Kind + "/" + h.Metadata.Name
		if prev, dup := seen[key]; dup {
			v.errorf(o, "metadata.name", "%s %q already defined at %s", h.Kind, h.Metadata.Name, prev.GetHeader().Origin)
			continue
		}
		seen[key] = o
		// Objects may come from a cache shared with later loads: resolve
		// copies, never the originals.
		switch x := o.(type) {
		case *Rack:
			v.inv.Racks[x.Metadata.Name] = copyOf(x)
		case *Subnet:
			v.inv.Subnets[x.Metadata.Name] = copyOf(x)
		case *Image:
			v.inv.Images[x.Metadata.Name] = copyOf(x)
		case *Profile:
			v.inv.Profiles[x.Metadata.Name] = copyOf(x)
		case *Machine:
			v.inv.Machines[x.Metadata.Name] = copyOf(x)
		}
	}
	for _, o := range v.inv.Objects() {
		checkEnums(reflect.ValueOf(o).Elem(), "", func(path, msg string) {
			if path == "spec.bmc.driver" || path == "spec.machine.bmc.driver" {
				msg = "unknown BMC driver: " + msg
			}
			v.errorf(o, path, "%s", msg)
		})
	}
	inv := v.inv
	for _, n := range sortedKeys(inv.Subnets) {
		v.subnet(inv.Subnets[n])
	}
	v.overlaps()
	for _, n := range sortedKeys(inv.Images) {
		v.image(inv.Images[n])
	}
	for _, n := range sortedKeys(inv.Profiles) {
		v.profile(inv.Profiles[n])
	}
	v.machines()
	for _, n := range sortedKeys(inv.Racks) {
		v.rack(inv.Racks[n])
	}
	return inv, v.problems
}

func (v *validator) rack(r *Rack) {
	applyDefaults(reflect.ValueOf(r))
	names := map[string]bool{}
	for i, sw := range r.Spec.Switches {
		p := fmt.Sprintf("spec.switches[%d]", i)
		v.nameOnce(r, p+".name", sw.Name, names, "required", "switch %q listed twice")
		for j, port := range sw.Ports {
			pp := fmt.Sprintf("%s.ports[%d]", p, j)
			if port.Name == "" {
				v.errorf(r, pp+".name", "required")
			}
			m, ok := v.inv.Machines[port.Machine]
			switch {
			case port.Machine == "":
				v.errorf(r, pp+".machine", "required")
			case !ok:
				v.errorf(r, pp+".machine", "machine %q not found", port.Machine)
			case !m.decoded("spec.interfaces") || !m.decoded("spec.rack"):
				// Reported where the machine is written: without its
				// interfaces its rack cannot be told from its boot subnet.
			case m.Spec.Rack != r.Metadata.Name:
				v.errorf(r, pp+".machine", "machine %q is in rack %q, not %q", port.Machine, m.Spec.Rack, r.Metadata.Name)
			case !hasInterface(m, port.Interface) && m.decoded("spec.interfaces"):
				v.errorf(r, pp+".interface", "machine %q has no interface %q", port.Machine, port.Interface)
			}
		}
	}
}

func hasInterface(m *Machine, name string) bool {
	for _, i := range m.Spec.Interfaces {
		if i.Name == name {
			return true
		}
	}
	return false
}

// subnetInfo is a parsed subnet, for address checks.
type subnetInfo struct {
	prefix    netip.Prefix
	gateway   netip.Addr
	dynamic   *addrRange
	reserved  []addrRange
	broadcast netip.Addr
}

type addrRange struct{ start, end netip.Addr }

func (r addrRange) contains(a netip.Addr) bool {
	return r.start.Compare(a) <= 0 && a.Compare(r.end) <= 0
}

func (r addrRange) String() string { return r.start.String() + "-" + r.end.String() }

func (v *validator) subnet(s *Subnet) {
	applyDefaults(reflect.ValueOf(s))
	sp := &s.Spec
	if sp.Rack == "" {
		v.errorf(s, "spec.rack", "required: the rack whose agents serve this subnet")
	} else if _, ok := v.inv.Racks[sp.Rack]; !ok {
		v.errorf(s, "spec.rack", "rack %q not found", sp.Rack)
	}
	prefix, ok := v.subnetPrefix(s)
	if !ok {
		return
	}
	c := subnetCheck{v: v, s: s, info: &subnetInfo{prefix: prefix, broadcast: lastAddr(prefix)}}
	if sp.Gateway != "" {
		if a, ok := c.inside("spec.gateway", sp.Gateway); ok {
			c.info.gateway = a
		}
	} else if sp.Mode == ModeRelay {
		v.errorf(s, "spec.gateway", "required for relay subnets: the router that relays DHCP")
	}
	v.subnetSettings(s)
	c.ranges()
	v.allowedRelays(s)
	v.subnetInfo[s] = c.info
}

// subnetPrefix parses the subnet's CIDR, reporting why it can't serve.
func (v *validator) subnetPrefix(s *Subnet) (netip.Prefix, bool) {
	cidr := s.Spec.CIDR
	if cidr == "" {
		v.errorf(s, "spec.cidr", "required, e.g. 10.0.0.0/24")
		return netip.Prefix{}, false
	}
	prefix, err := netip.ParsePrefix(cidr)
	switch {
	case err != nil:
		v.errorf(s, "spec.cidr", "%q is not a CIDR (e.g. 10.0.0.0/24)", cidr)
	case !prefix.Addr().Is4():
		v.errorf(s, "spec.cidr", "%q: only IPv4 subnets are served so far", cidr)
	case prefix != prefix.Masked():
		v.errorf(s, "spec.cidr", "%q has host bits set: did you mean %s?", cidr, prefix.Masked())
	case prefix.Bits() > 30:
		v.errorf(s, "spec.cidr", "%q is too small to hold machines", cidr)
	default:
		return prefix, true
	}
	return netip.Prefix{}, false
}

// subnetSettings checks the DNS servers, MTU, VLAN and lease time.
func (v *validator) subnetSettings(s *Subnet) {
	sp := &s.Spec
	for i, d := range sp.DNS {
		if a, err := netip.ParseAddr(d); err != nil || !a.Is4() {
			v.errorf(s, fmt.Sprintf("spec.dns[%d]", i), "%q is not an IPv4 address", d)
		}
	}
	if sp.MTU < 576 || sp.MTU > 9216 {
		v.errorf(s, "spec.mtu", "%d is outside 576-9216", sp.MTU)
	}
	if sp.VLAN < 0 || sp.VLAN > 4094 {
		v.errorf(s, "spec.vlan", "%d is outside 0-4094", sp.VLAN)
	}
	if sp.LeaseTime.Minutes() < 1 {
		v.errorf(s, "spec.leaseTime", "%s is too short (at least 1m)", sp.LeaseTime)
	}
}

// allowedRelays checks the addresses relays may send from.
func (v *validator) allowedRelays(s *Subnet) {
	seen := map[netip.Addr]bool{}
	for i, r := range s.Spec.AllowedRelays {
		path := fmt.Sprintf("spec.allowedRelays[%d]", i)
		a, err := netip.ParseAddr(r)
		switch {
		case err != nil || !a.Is4():
			v.errorf(s, path, "%q is not an IPv4 address (the address a relay sends from)", r)
		case a.IsUnspecified() || a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
			v.errorf(s, path, "%s cannot be a relay's address", a)
		case seen[a]:
			v.errorf(s, path, "%s is listed twice", a)
		}
		seen[a] = true
	}
}

// subnetCheck checks addresses of one subnet against its parsed prefix,
// filling in info.
type subnetCheck struct {
	v    *validator
	s    *Subnet
	info *subnetInfo
}

// inside parses a host address of the subnet.
func (c subnetCheck) inside(path, ip string) (netip.Addr, bool) {
	prefix := c.info.prefix
	a, err := netip.ParseAddr(ip)
	if err != nil || !a.Is4() {
		c.v.errorf(c.s, path, "%q is not an IPv4 address", ip)
		return a, false
	}
	if !prefix.Contains(a) {
		c.v.errorf(c.s, path, "%s is outside %s", a, prefix)
		return a, false
	}
	if a == prefix.Addr() || a == c.info.broadcast {
		c.v.errorf(c.s, path, "%s is the network or broadcast address of %s", a, prefix)
		return a, false
	}
	return a, true
}

func (c subnetCheck) parseRange(path string, r IPRange) (addrRange, bool) {
	a, ok1 := c.inside(path+".start", r.Start)
	b, ok2 := c.inside(path+".end", r.End)
	if !ok1 || !ok2 {
		return addrRange{}, false
	}
	if b.Less(a) {
		c.v.errorf(c.s, path, "range %s ends before it starts", r)
		return addrRange{}, false
	}
	return addrRange{a, b}, true
}

// ranges checks the dynamic and reserved ranges (set the gateway first).
func (c subnetCheck) ranges() {
	v, s, sp, info := c.v, c.s, &c.s.Spec, c.info
	if sp.DynamicRange != nil {
		if sp.Mode == ModeProxy {
			v.warnf(s, "spec.dynamicRange", "ignored: in proxy mode the existing DHCP server hands out addresses")
		}
		if r, ok := c.parseRange("spec.dynamicRange", *sp.DynamicRange); ok {
			info.dynamic = &r
			if info.gateway.IsValid() && r.contains(info.gateway) {
				v.errorf(s, "spec.dynamicRange", "range %s contains the gateway %s", r, info.gateway)
			}
		}
	}
	for i, rr := range sp.Reserved {
		if r, ok := c.parseRange(fmt.Sprintf("spec.reserved[%d]", i), rr); ok {
			info.reserved = append(info.reserved, r)
			if info.dynamic != nil && r.start.Compare(info.dynamic.end) <= 0 && info.dynamic.start.Compare(r.end) <= 0 {
				v.errorf(s, fmt.Sprintf("spec.reserved[%d]", i), "reserved range %s overlaps the dynamic range %s", r, info.dynamic)
			}
		}
	}
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Addr().As4()
	bits := p.Bits()
	for i := 0; i < 4; i++ {
		for b := 0; b < 8; b++ {
			if i*8+b >= bits {
				a[i] |= 0x80 >> b
			}
		}
	}
	return netip.AddrFrom4(a)
}

func (v *validator) overlaps() {
	names := sortedKeys(v.inv.Subnets)
	for i, a := range names {
		ia := v.subnetInfo[v.inv.Subnets[a]]
		if ia == nil {
			continue
		}
		for _, b := range names[i+1:] {
			ib := v.subnetInfo[v.inv.Subnets[b]]
			if ib != nil && ia.prefix.Overlaps(ib.prefix) {
				sb := v.inv.Subnets[b]
				v.errorf(sb, "spec.cidr", "%s overlaps subnet %q (%s) defined at %s", ib.prefix, a, ia.prefix, v.inv.Subnets[a].Origin)
			}
		}
	}
}

var hexRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

func (v *validator) image(im *Image) {
	applyDefaults(reflect.ValueOf(im))
	sp := &im.Spec
	switch sp.Purpose {
	case "":
		v.errorf(im, "spec.purpose", "required: ephemeral or os")
	case PurposeEphemeral:
		if sp.Kernel == nil {
			v.errorf(im, "spec.kernel", "required for ephemeral images")
		}
		if sp.Initrd == nil {
			v.errorf(im, "spec.initrd", "required for ephemeral images")
		}
		if sp.Disk != nil {
			v.errorf(im, "spec.disk", "ephemeral images boot a kernel and initrd; disk is for os images")
		}
		if sp.Confirm != "" {
			v.errorf(im, "spec.confirm", "ephemeral images report through the machine agent; confirm is for os images")
		}
	case PurposeOS:
		if sp.Disk == nil {
			v.errorf(im, "spec.disk", "required for os images")
		}
		if sp.Kernel != nil || sp.Initrd != nil {
			v.errorf(im, "spec", "os images are written to disk whole; kernel and initrd are for ephemeral images")
		}
	}
	if sp.Disk != nil {
		inferred := "raw"
		if u, err := url.Parse(sp.Disk.URL); err == nil {
			switch {
			case strings.HasSuffix(u.Path, ".gz"):
				inferred = "raw.gz"
			case strings.HasSuffix(u.Path, ".zst"):
				inferred = "raw.zst"
			}
		}
		if sp.Format == "" {
			sp.Format = inferred
		} else if sp.Format != inferred {
			v.warnf(im, "spec.format", "%s, but the URL's suffix suggests %s", sp.Format, inferred)
		}
	}
	for name, a := range map[string]*Artifact{"kernel": sp.Kernel, "initrd": sp.Initrd, "disk": sp.Disk} {
		if a == nil {
			continue
		}
		p := "spec." + name
		if a.URL == "" {
			v.errorf(im, p+".url", "required")
		} else if u, err := url.Parse(a.URL); err != nil || !(u.Scheme == "http" || u.Scheme == "https" || u.Scheme == "file") || (u.Scheme != "file" && u.Host == "") || u.Path == "" {
			v.errorf(im, p+".url", "%q is not an http, https or file URL of a file", a.URL)
		}
		a.SHA256 = strings.ToLower(a.SHA256)
		switch {
		case a.SHA256 == "":
			v.errorf(im, p+".sha256", "missing: Kiln serves only verified files (sha256sum FILE gives it)")
		case !hexRE.MatchString(a.SHA256):
			v.errorf(im, p+".sha256", "%q is not 64 hex digits", a.SHA256)
		}
	}
}

func (v *validator) profile(pr *Profile) {
	m := &pr.Spec.Machine
	for _, f := range []struct {
		set  bool
		name string
	}{{len(m.Interfaces) > 0, "interfaces"}, {len(m.Bonds) > 0, "bonds"}, {len(m.VLANs) > 0, "vlans"}, {m.Profile != "", "profile"}} {
		if f.set {
			v.errorf(pr, "spec.machine."+f.name, "profiles can't set %s: they belong to each machine", f.name)
		}
	}
	if pr.Spec.Selector != nil && len(pr.Spec.Selector.MatchLabels) == 0 {
		v.errorf(pr, "spec.selector.matchLabels", "required: an empty selector would match every machine")
	}
	if m.Rack != "" && v.inv.Racks[m.Rack] == nil {
		v.errorf(pr, "spec.machine.rack", "rack %q not found", m.Rack)
	}
	if m.Image != "" && v.inv.Images[m.Image] == nil {
		v.errorf(pr, "spec.machine.image", "image %q not found", m.Image)
	}
	if r := pr.Spec.Rollout; r != nil && r.MaxUnavailable < 1 {
		v.errorf(pr, "spec.rollout.maxUnavailable", "must be at least 1 (got %d): a rollout with no machine unavailable at a time never redeploys any", r.MaxUnavailable)
	}
}

// machines resolves profiles and checks machines, including fleet-wide
// uniqueness of MACs and addresses.
func (v *validator) machines() {
	f := &fleet{macs: map[string]owner{}, ips: map[netip.Addr]owner{}}
	var selectors []*Profile
	for _, n := range sortedKeys(v.inv.Profiles) {
		if p := v.inv.Profiles[n]; p.Spec.Selector != nil {
			selectors = append(selectors, p)
		}
	}
	for _, name := range sortedKeys(v.inv.Machines) {
		m := v.inv.Machines[name]
		v.resolveProfile(m, selectors)
		applyDefaults(reflect.ValueOf(m))
		v.machine(m, f)
	}
}

// fleet records the MACs and static addresses claimed so far, which must
// be unique across machines.
type fleet struct {
	macs map[string]owner
	ips  map[netip.Addr]owner
}

// owner is the machine and field that claimed a MAC or an address.
type owner struct {
	m    *Machine
	path string
}

// machine checks one machine whose profile is resolved.
func (v *validator) machine(m *Machine, f *fleet) {
	c := machineCheck{v: v, m: m, fleet: f, links: map[string]bool{}}
	c.interfaces()
	c.rack()
	c.bonds()
	c.vlans()
	v.bmc(m)
	v.desired(m)
	v.userData(m)
	sp := &m.Spec
	if rd := sp.RootDisk; rd != nil && rd.MaxSize != 0 && rd.MinSize > rd.MaxSize {
		v.errorf(m, "spec.rootDisk", "minSize is larger than maxSize: no disk can match")
	}
	if sp.CommissionGeneration < 0 || sp.DeployGeneration < 0 {
		v.errorf(m, "spec", "generations can't be negative")
	}
}

// machineCheck checks the network settings of one machine.
type machineCheck struct {
	v *validator
	m *Machine
	*fleet
	// links holds the interface and bond names seen so far, which VLANs
	// may name as their link.
	links map[string]bool
}

// nameOnce reports a name at path that is empty (required is the
// message) or already in seen (twice is a format taking the name), and
// adds it to seen.
func (v *validator) nameOnce(o Object, path, name string, seen map[string]bool, required, twice string) {
	if name == "" {
		v.errorf(o, path, "%s", required)
	} else if seen[name] {
		v.errorf(o, path, twice, name)
	}
	seen[name] = true
}

func (c machineCheck) interfaces() {
	v, m := c.v, c.m
	if len(m.Spec.Interfaces) == 0 {
		v.errorf(m, "spec.interfaces", "required: at least one interface with its MAC, to network-boot")
	}
	boots := 0
	for i := range m.Spec.Interfaces {
		ifc := &m.Spec.Interfaces[i]
		p := fmt.Sprintf("spec.interfaces[%d]", i)
		v.nameOnce(m, p+".name", ifc.Name, c.links, "required, e.g. eno1", "interface %q listed twice")
		if ifc.Boot {
			boots++
		}
		c.mac(p+".mac", ifc)
		c.subnet(p+".subnet", ifc.Subnet)
		c.claimIP(p+".ip", ifc.Subnet, ifc.IP)
	}
	if boots > 1 {
		v.errorf(m, "spec.interfaces", "%d interfaces marked boot; mark one", boots)
	}
}

// mac checks an interface's MAC, writes it in canonical form and claims it.
func (c machineCheck) mac(path string, ifc *Interface) {
	v, m := c.v, c.m
	if ifc.MAC == "" {
		v.errorf(m, path, "required")
		return
	}
	hw, err := net.ParseMAC(ifc.MAC)
	if err != nil || len(hw) != 6 {
		v.errorf(m, path, "%q is not a MAC address (e.g. 52:54:00:12:34:56)", ifc.MAC)
		return
	}
	ifc.MAC = hw.String()
	if prev, dup := c.macs[ifc.MAC]; dup {
		v.errorf(m, path, "%s is already used by machine %q (%s at %s)", ifc.MAC, prev.m.Metadata.Name, prev.path, prev.m.Origin)
	} else {
		c.macs[ifc.MAC] = owner{m, path}
	}
}

// rack takes the machine's rack from its boot subnet when unset, and
// checks that the two agree.
func (c machineCheck) rack() {
	v, m, sp := c.v, c.m, &c.m.Spec
	if b := sp.BootInterface(); b != nil {
		if b.Subnet == "" {
			v.errorf(m, "spec.interfaces", "the boot interface %q needs a subnet, so Kiln knows which rack answers its DHCP", b.Name)
		} else if s := v.inv.Subnets[b.Subnet]; s != nil {
			switch {
			case sp.Rack == "":
				sp.Rack = s.Spec.Rack
			case sp.Rack != s.Spec.Rack:
				v.errorf(m, "spec.rack", "%q, but the boot interface's subnet %q is served by rack %q", sp.Rack, b.Subnet, s.Spec.Rack)
			}
		}
	}
	if sp.Rack != "" && v.inv.Racks[sp.Rack] == nil {
		v.errorf(m, "spec.rack", "rack %q not found", sp.Rack)
	}
}

func (c machineCheck) bonds() {
	v, m := c.v, c.m
	for i, b := range m.Spec.Bonds {
		p := fmt.Sprintf("spec.bonds[%d]", i)
		v.nameOnce(m, p+".name", b.Name, c.links, "required, e.g. bond0", "%q is already an interface or bond name")
		if len(b.Interfaces) == 0 {
			v.errorf(m, p+".interfaces", "required: the interfaces to bond")
		}
		for j, member := range b.Interfaces {
			if !hasInterface(m, member) {
				v.errorf(m, fmt.Sprintf("%s.interfaces[%d]", p, j), "no interface %q", member)
			}
		}
		c.subnet(p+".subnet", b.Subnet)
		c.claimIP(p+".ip", b.Subnet, b.IP)
	}
}

func (c machineCheck) vlans() {
	v, m := c.v, c.m
	for i := range m.Spec.VLANs {
		vl := &m.Spec.VLANs[i]
		p := fmt.Sprintf("spec.vlans[%d]", i)
		if vl.ID < 1 || vl.ID > 4094 {
			v.errorf(m, p+".id", "%d is outside 1-4094", vl.ID)
		}
		if !c.links[vl.Link] {
			v.errorf(m, p+".link", "no interface or bond %q", vl.Link)
		}
		if vl.Name == "" {
			vl.Name = vl.Link + "." + strconv.Itoa(vl.ID)
		}
		c.subnet(p+".subnet", vl.Subnet)
		if s := v.inv.Subnets[vl.Subnet]; s != nil && s.Spec.VLAN != 0 && s.Spec.VLAN != vl.ID {
			v.warnf(m, p+".id", "%d, but subnet %q is on VLAN %d", vl.ID, vl.Subnet, s.Spec.VLAN)
		}
		c.claimIP(p+".ip", vl.Subnet, vl.IP)
	}
}

// subnet reports a subnet name that is set but not defined.
func (c machineCheck) subnet(path, subnet string) {
	if subnet != "" && c.v.inv.Subnets[subnet] == nil {
		c.v.errorf(c.m, path, "subnet %q not found", subnet)
	}
}

// claimIP checks a static address against its subnet and claims it.
func (c machineCheck) claimIP(path, subnet, ip string) {
	v, m := c.v, c.m
	if ip == "" || ip == "auto" {
		return
	}
	a, err := netip.ParseAddr(ip)
	if err != nil || !a.Is4() {
		v.errorf(m, path, "%q is not an IPv4 address (or auto)", ip)
		return
	}
	if subnet == "" {
		v.errorf(m, path, "a static address needs a subnet")
		return
	}
	info := v.subnetInfo[v.inv.Subnets[subnet]]
	if info == nil {
		return // the subnet is missing or broken: reported elsewhere
	}
	if msg := info.refuse(a, subnet); msg != "" {
		v.errorf(m, path, "%s", msg)
		return
	}
	if prev, dup := c.ips[a]; dup {
		v.errorf(m, path, "%s is already used by machine %q (%s at %s)", a, prev.m.Metadata.Name, prev.path, prev.m.Origin)
		return
	}
	c.ips[a] = owner{m, path}
}

// refuse says why a (of the subnet named subnet) can't be a machine's
// static address, or returns "".
func (info *subnetInfo) refuse(a netip.Addr, subnet string) string {
	switch {
	case !info.prefix.Contains(a):
		return fmt.Sprintf("%s is outside subnet %q (%s)", a, subnet, info.prefix)
	case a == info.prefix.Addr() || a == info.broadcast:
		return fmt.Sprintf("%s is the network or broadcast address of %s", a, info.prefix)
	case a == info.gateway:
		return fmt.Sprintf("%s is the gateway of subnet %q", a, subnet)
	case info.dynamic != nil && info.dynamic.contains(a):
		return fmt.Sprintf("%s is inside the dynamic range %s of subnet %q, which discovery hands out", a, info.dynamic, subnet)
	}
	for _, r := range info.reserved {
		if r.contains(a) {
			return fmt.Sprintf("%s is inside the reserved range %s of subnet %q", a, r, subnet)
		}
	}
	return ""
}

func (v *validator) resolveProfile(m *Machine, selectors []*Profile) {
	var p *Profile
	if m.Spec.Profile != "" {
		if p = v.inv.Profiles[m.Spec.Profile]; p == nil {
			v.errorf(m, "spec.profile", "profile %q not found", m.Spec.Profile)
			return
		}
	} else {
		var matched []string
		for _, sp := range selectors {
			if sp.Spec.Selector.Matches(m.Metadata.Labels) {
				matched = append(matched, sp.Metadata.Name)
				p = sp
			}
		}
		switch len(matched) {
		case 0:
			return
		case 1:
			m.Spec.Profile = p.Metadata.Name
		default:
			v.errorf(m, "metadata.labels", "labels match profiles %s; set spec.profile to choose one", strings.Join(matched, ", "))
			return
		}
	}
	src := p.Spec.Machine // a shallow copy: fill only reads it
	if m.Spec.UserData != "" || m.Spec.UserDataFile != "" {
		// userData and userDataFile are one setting written two ways:
		// the machine's replaces the profile's whole.
		src.UserData, src.UserDataFile = "", ""
	} else if src.UserDataFile != "" {
		v.userDataProfile[m] = p
	}
	fill(reflect.ValueOf(&m.Spec).Elem(), reflect.ValueOf(&src).Elem())
}

func (v *validator) bmc(m *Machine) {
	b := m.Spec.BMC
	if b == nil {
		v.warnf(m, "spec", "no bmc: Kiln can't power this machine; it will wait for someone to (driver: manual says so explicitly)")
		return
	}
	switch b.Driver {
	case "":
		v.errorf(m, "spec.bmc.driver", "required: one of %s", strings.Join(BMCDrivers, ", "))
		return
	case "manual":
		return
	}
	if b.Address == "" {
		v.errorf(m, "spec.bmc.address", "required for driver %s", b.Driver)
	} else if b.Driver == "webhook" || strings.Contains(b.Address, "://") {
		u, err := url.Parse(b.Address)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			v.errorf(m, "spec.bmc.address", "%q is not an http or https URL", b.Address)
		} else if u.Scheme == "http" {
			v.warnf(m, "spec.bmc.address", "plain http: credentials travel unencrypted")
		}
	} else if _, _, err := net.SplitHostPort(b.Address); err != nil && strings.Count(b.Address, ":") > 0 && !strings.HasPrefix(b.Address, "[") {
		v.errorf(m, "spec.bmc.address", "%q is not host or host:port", b.Address)
	}
	if (b.Driver == "ipmi" || b.Driver == "redfish") && b.Username == "" {
		v.errorf(m, "spec.bmc.username", "required for driver %s", b.Driver)
	}
	pw := b.Password
	switch {
	case pw == nil && (b.Driver == "ipmi" || b.Driver == "redfish") && m.decoded("spec.bmc.password"):
		v.warnf(m, "spec.bmc", "no password: the BMC must accept an empty one")
	case pw == nil:
	case pw.Plaintext() && pw.FromEnv == "" && pw.FromFile == "":
		if r := v.inv.Racks[m.Spec.Rack]; r == nil || !r.Spec.AllowPlaintextPasswords {
			v.errorf(m, "spec.bmc.password", "plaintext password in the source: write password: {fromFile: /path/on/the/rack/host} or password: {fromEnv: VARIABLE} (read by the rack agent), or set spec.allowPlaintextPasswords: true on Rack %q", m.Spec.Rack)
		} else {
			v.warnf(m, "spec.bmc.password", "plaintext password in the source (allowed by Rack %s): fromFile or fromEnv keep it out of git", m.Spec.Rack)
		}
	case pw.FromFile != "" && pw.FromEnv != "":
		v.errorf(m, "spec.bmc.password", "set one of fromFile and fromEnv, not both")
	case pw.FromFile == "" && pw.FromEnv == "":
		v.errorf(m, "spec.bmc.password", "set fromFile or fromEnv")
	}
}

// desired rejects desired states that can't be reached.
func (v *validator) desired(m *Machine) {
	sp := &m.Spec
	if sp.Arch == "arm64" && sp.Firmware == "bios" {
		v.errorf(m, "spec.firmware", "arm64 machines boot UEFI only")
	}
	if sp.Adopt && sp.State != StateDeployed {
		v.errorf(m, "spec.adopt", "adopt records a running machine as deployed: it needs state: deployed (and the image it runs), not state: %s; to release an adopted machine, remove adopt", sp.State)
	}
	if sp.Image == "" {
		switch {
		case sp.Adopt:
			v.errorf(m, "spec.image", "required: adopt records the machine as deployed with an image; name the image it runs")
		case sp.State == StateDeployed:
			v.errorf(m, "spec.image", "required: state is deployed but no image says what to deploy")
		}
		return
	}
	im := v.inv.Images[sp.Image]
	switch {
	case im == nil:
		v.errorf(m, "spec.image", "image %q not found", sp.Image)
	case im.Spec.Purpose != PurposeOS:
		v.errorf(m, "spec.image", "image %q is an %s image; machines deploy os images", sp.Image, im.Spec.Purpose)
	case im.Spec.Arch != "" && im.Spec.Arch != sp.Arch:
		v.errorf(m, "spec.image", "image %q is for %s, the machine is %s", sp.Image, im.Spec.Arch, sp.Arch)
	}
}

// MaxUserData bounds a machine's user-data, so that every resolved object
// fits in one etcd request.
const MaxUserData = 512 << 10

func (v *validator) userData(m *Machine) {
	sp := &m.Spec
	if sp.UserDataFile != "" {
		if sp.UserData != "" {
			v.errorf(m, "spec.userDataFile", "set userData or userDataFile, not both")
			return
		}
		from := m.Origin.File
		if p := v.userDataProfile[m]; p != nil {
			from = p.Origin.File
		}
		data, err := readRelative(v.fsys, from, sp.UserDataFile, 1<<20)
		if err != nil {
			if p := v.userDataProfile[m]; p != nil {
				v.errorf(m, "spec.userDataFile", "%v (set by profile %q at %s)", err, p.Metadata.Name, p.Origin)
			} else {
				v.errorf(m, "spec.userDataFile", "%v", err)
			}
			return
		}
		sp.UserData = string(data)
	}
	if sp.UserData == "" {
		return
	}
	ud := sp.UserData
	switch {
	case strings.HasPrefix(ud, "#cloud-config"):
		var doc any
		if err := yaml.Unmarshal([]byte(ud), &doc); err != nil {
			v.errorf(m, "spec.userData", "#cloud-config is not valid YAML: %s", strings.TrimPrefix(err.Error(), "yaml: "))
		} else if _, ok := doc.(map[string]any); !ok && doc != nil {
			v.errorf(m, "spec.userData", "#cloud-config must be a YAML mapping")
		}
	case strings.HasPrefix(ud, "#!"), strings.HasPrefix(ud, "#include"), strings.HasPrefix(ud, "Content-Type: multipart/"):
	default:
		v.errorf(m, "spec.userData", "must start with #cloud-config, #!, #include or be MIME multipart")
	}
	if len(ud) > MaxUserData {
		v.errorf(m, "spec.userData", "%d bytes: user-data is limited to %d KiB", len(ud), MaxUserData>>10)
	} else if len(ud) > 16<<10 {
		v.warnf(m, "spec.userData", "%d bytes: some clouds' cloud-init cap user-data at 16 KiB", len(ud))
	}
}

// SortedNames returns the keys of a map of objects in order.
func SortedNames[V any](m map[string]V) []string { return sortedKeys(m) }

// ValidName reports whether name is a valid object name (metadata.name):
// what a caller checks before using a name that came from a request.
func ValidName(name string) bool { return nameRE.MatchString(name) }
