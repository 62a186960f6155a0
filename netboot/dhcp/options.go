package dhcp

import (
	"encoding/binary"
	"encoding/hex"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Option codes used here.
const (
	optSubnetMask   = 1
	optRouter       = 3
	optDNS          = 6
	optHostname     = 12
	optDomain       = 15
	optMTU          = 26
	optVendorInfo   = 43
	optRequestedIP  = 50
	optLeaseTime    = 51
	optMessageType  = 53
	optServerID     = 54
	optMessage      = 56
	optRenewal      = 58
	optRebinding    = 59
	optVendorClass  = 60
	optClientID     = 61
	optBootfile     = 67
	optUserClass    = 77
	optRelayInfo    = 82
	optClientArch   = 93
	optClientUUID   = 97
	subCircuitID    = 1
	subPXEDiscovery = 6  // PXE_DISCOVERY_CONTROL
	subPXEBootItem  = 71 // PXE_BOOT_ITEM
)

// Client system architectures (option 93, RFC 4578 and the IANA registry).
const (
	archBIOS         = 0
	archEFIIA32      = 6
	archEFIX64       = 7
	archEFIBC        = 9
	archEFIARM32     = 10
	archEFIARM64     = 11
	archEFIIA32HTTP  = 15
	archEFIX64HTTP   = 16
	archEFIARM32HTTP = 18
	archEFIARM64HTTP = 19
)

var archNames = map[uint16]string{
	archBIOS: "bios", archEFIIA32: "uefi-ia32", archEFIX64: "uefi-x64", archEFIBC: "uefi-x64",
	archEFIARM32: "uefi-arm32", archEFIARM64: "uefi-arm64", archEFIIA32HTTP: "uefi-ia32-http",
	archEFIX64HTTP: "uefi-x64-http", archEFIARM32HTTP: "uefi-arm32-http", archEFIARM64HTTP: "uefi-arm64-http",
}

func archName(a uint16) string {
	if n, ok := archNames[a]; ok {
		return n
	}
	return "arch-" + strconv.Itoa(int(a))
}

var msgTypeOpt = map[dhcpv4.MessageType][]byte{
	dhcpv4.MessageTypeOffer: {byte(dhcpv4.MessageTypeOffer)},
	dhcpv4.MessageTypeAck:   {byte(dhcpv4.MessageTypeAck)},
	dhcpv4.MessageTypeNak:   {byte(dhcpv4.MessageTypeNak)},
}

var (
	vendorPXE  = []byte("PXEClient")
	vendorHTTP = []byte("HTTPClient")
	// Option 43 for PXE clients: PXE_DISCOVERY_CONTROL = 8, "boot the
	// file in the reply, no boot server discovery" (PXE 2.1, as dnsmasq
	// and smee answer in proxy mode).
	pxeVendorInfo = []byte{subPXEDiscovery, 1, 8, 255}
)

// client is what a request says about the client.
type client struct {
	pxe       bool   // vendor class PXEClient or HTTPClient
	http      bool   // vendor class HTTPClient or an HTTP boot arch
	ipxe      bool   // user class iPXE
	arch      uint16 // option 93 (first), or from the vendor class
	hasArch   bool
	vendor    string
	userClass string
	circuitID string
}

func parseClient(req *dhcpv4.DHCPv4) client {
	var c client
	vc := req.Options[optVendorClass]
	if len(vc) > 0 {
		c.vendor = string(vc)
		c.pxe = strings.HasPrefix(c.vendor, "PXEClient") || strings.HasPrefix(c.vendor, "HTTPClient")
		c.http = strings.HasPrefix(c.vendor, "HTTPClient")
	}
	if a := req.Options[optClientArch]; len(a) >= 2 {
		c.arch, c.hasArch = binary.BigEndian.Uint16(a), true
	} else if i := strings.Index(c.vendor, ":Arch:"); i >= 0 && len(c.vendor) >= i+11 {
		if n, err := strconv.ParseUint(c.vendor[i+6:i+11], 10, 16); err == nil {
			c.arch, c.hasArch = uint16(n), true
		}
	}
	if c.hasArch && (c.arch == archEFIX64HTTP || c.arch == archEFIARM64HTTP || c.arch == archEFIIA32HTTP || c.arch == archEFIARM32HTTP) {
		c.http = true
	}
	if uc := req.Options[optUserClass]; len(uc) > 0 {
		c.userClass, c.ipxe = userClass(uc)
	}
	if ri := req.Options[optRelayInfo]; len(ri) > 0 {
		if v := subOption(ri, subCircuitID); v != nil {
			c.circuitID = printable(v)
		}
	}
	return c
}

// userClass reads option 77: iPXE sends the bare string, RFC 3004
// clients a list of length-prefixed classes.
func userClass(b []byte) (string, bool) {
	s := string(b)
	if s == "iPXE" {
		return s, true
	}
	var names []string
	ipxe := false
	for rest := b; len(rest) > 0; {
		n := int(rest[0])
		if n == 0 || n+1 > len(rest) {
			return printable(b), false
		}
		name := string(rest[1 : n+1])
		ipxe = ipxe || name == "iPXE"
		names = append(names, name)
		rest = rest[n+1:]
	}
	return printable([]byte(strings.Join(names, ","))), ipxe
}

// subOption returns a sub-option of an encapsulated option (43, 82).
func subOption(b []byte, code byte) []byte {
	for len(b) >= 2 {
		c, n := b[0], int(b[1])
		if c == 0 {
			b = b[1:]
			continue
		}
		if c == 255 || 2+n > len(b) {
			return nil
		}
		if c == code {
			return b[2 : 2+n]
		}
		b = b[2+n:]
	}
	return nil
}

// printable returns b as text when it is printable ASCII, else as hex.
func printable(b []byte) string {
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			return hex.EncodeToString(b)
		}
	}
	return string(b)
}

// boot is what a network-booting client is told.
type boot struct {
	file   string
	next   netip.Addr // siaddr
	vendor []byte     // option 60 of the reply, nil for none
}

// bootFor decides the boot file for a PXE/HTTP/iPXE client; ok is false
// for clients that get no boot options.
func (c *config) bootFor(cl *client, server netip.Addr, mac net.HardwareAddr, ip netip.Addr) (boot, bool) {
	if !cl.pxe {
		return boot{}, false
	}
	b := boot{next: c.boot.TFTPServer}
	if !b.next.IsValid() {
		b.next = server
	}
	var tmpl string
	switch {
	case cl.ipxe: // iPXE is running: its script, whatever the firmware
		tmpl = c.boot.ScriptURL
	case cl.http:
		b.vendor = vendorHTTP
		switch cl.arch {
		case archEFIARM64HTTP:
			tmpl = c.boot.HTTPBootARM64URL
		case archEFIX64HTTP:
			tmpl = c.boot.HTTPBootURL
		default:
			if !cl.hasArch { // HTTPClient without option 93: assume x64
				tmpl = c.boot.HTTPBootURL
			}
		}
	default:
		arch := cl.arch // a PXEClient without option 93 is a BIOS
		switch arch {
		case archBIOS:
			tmpl = c.boot.BIOSFile
		case archEFIX64, archEFIBC:
			tmpl = c.boot.EFIFile
		case archEFIARM64:
			tmpl = c.boot.EFIARM64
		}
	}
	if tmpl == "" {
		return boot{}, false
	}
	b.file = expand(tmpl, server, mac, ip)
	return b, true
}

// expand replaces {server}, {mac} and {ip}.
func expand(tmpl string, server netip.Addr, mac net.HardwareAddr, ip netip.Addr) string {
	if !strings.Contains(tmpl, "{") {
		return tmpl
	}
	ipText := ""
	if ip.IsValid() && !ip.IsUnspecified() {
		ipText = ip.String()
	}
	return strings.NewReplacer("{server}", server.String(), "{mac}", mac.String(), "{ip}", ipText).Replace(tmpl)
}

// setBoot puts b into a reply: siaddr, the file field (when it fits) and
// option 67.
func setBoot(r *dhcpv4.DHCPv4, b boot) {
	r.ServerIPAddr = b.next.AsSlice()
	if len(b.file) <= 127 {
		r.BootFileName = b.file
	}
	r.Options[optBootfile] = []byte(truncate(b.file, 255*3))
	if b.vendor != nil {
		r.Options[optVendorClass] = b.vendor
	}
}

// newReply starts a reply of type mt to req.
func newReply(req *dhcpv4.DHCPv4, mt dhcpv4.MessageType, server netip.Addr, giaddr netip.Addr) *dhcpv4.DHCPv4 {
	r := &dhcpv4.DHCPv4{
		OpCode:        dhcpv4.OpcodeBootReply,
		HWType:        req.HWType,
		TransactionID: req.TransactionID,
		Flags:         req.Flags & 0x8000,
		ClientHWAddr:  req.ClientHWAddr,
		Options:       make(dhcpv4.Options, 16),
	}
	if giaddr.IsValid() {
		r.GatewayIPAddr = giaddr.AsSlice()
	}
	r.Options[optMessageType] = msgTypeOpt[mt]
	r.Options[optServerID] = server.AsSlice()
	// RFC 3046: the relay agent information comes back as it came; RFC
	// 6842: so does the client identifier.
	if v, ok := req.Options[optRelayInfo]; ok {
		r.Options[optRelayInfo] = v
	}
	if v, ok := req.Options[optClientID]; ok {
		r.Options[optClientID] = v
	}
	return r
}

// setNetwork puts the subnet's options (and the host's name) into a reply.
func setNetwork(r *dhcpv4.DHCPv4, sn *subnet, h *host) {
	o := r.Options
	o[optSubnetMask] = sn.optMask
	if sn.optRouter != nil {
		o[optRouter] = sn.optRouter
	}
	if sn.optDNS != nil {
		o[optDNS] = sn.optDNS
	}
	if sn.optDomain != nil {
		o[optDomain] = sn.optDomain
	}
	if sn.optMTU != nil {
		o[optMTU] = sn.optMTU
	}
	if h != nil && h.optName != nil {
		o[optHostname] = h.optName
	}
}

// setLeaseTime puts options 51, 58 and 59 for lt into a reply.
func setLeaseTime(r *dhcpv4.DHCPv4, sn *subnet, lt time.Duration) {
	lo := sn.optLease
	if lt != sn.LeaseTime {
		lo = makeLeaseOpts(lt)
	}
	r.Options[optLeaseTime] = lo.lease
	r.Options[optRenewal] = lo.t1
	r.Options[optRebinding] = lo.t2
}

// ipv4 returns an address from a packet field (nil, 4 or 16 bytes) as
// an IPv4 netip.Addr, zero when absent or unspecified.
func ipv4(ip net.IP) netip.Addr {
	if len(ip) == 16 && ip.To4() != nil {
		ip = ip.To4()
	}
	if len(ip) != 4 {
		return netip.Addr{}
	}
	a := netip.AddrFrom4([4]byte(ip))
	if a.IsUnspecified() {
		return netip.Addr{}
	}
	return a
}

// optAddr returns an option holding one IPv4 address, zero when absent,
// malformed or 0.0.0.0; bad is set when present but malformed.
func optAddr(req *dhcpv4.DHCPv4, code uint8) (a netip.Addr, bad bool) {
	v, ok := req.Options[code]
	if !ok {
		return netip.Addr{}, false
	}
	if len(v) != 4 {
		return netip.Addr{}, true
	}
	a = netip.AddrFrom4([4]byte(v))
	if a.IsUnspecified() {
		return netip.Addr{}, false
	}
	return a, false
}
