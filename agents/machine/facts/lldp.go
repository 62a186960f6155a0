package facts

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"
	"unicode"

	"github.com/kilnhq/kiln/spec/agentapi"
)

// DefaultLLDPWait is how long the agent listens for LLDP from its start:
// switches send every 30 s by default (many also at once when a link
// comes up), so 31 s hears each at least once. Facts are sent as soon as
// every interface that is up has heard its neighbour.
const DefaultLLDPWait = 31 * time.Second

// EtherTypeLLDP is the ethertype of LLDP frames.
const EtherTypeLLDP = 0x88cc

// LLDP TLV types (IEEE 802.1AB).
const (
	tlvEnd        = 0
	tlvChassisID  = 1
	tlvPortID     = 2
	tlvTTL        = 3
	tlvPortDesc   = 4
	tlvSystemName = 5
)

var chassisTypes = map[byte]string{
	1: "chassis-component", 2: "interface-alias", 3: "port-component",
	4: "mac", 5: "network-address", 6: "interface-name", 7: "local",
}

var portTypes = map[byte]string{
	1: "interface-alias", 2: "port-component", 3: "mac",
	4: "network-address", 5: "interface-name", 6: "agent-circuit-id", 7: "local",
}

// ParseLLDP decodes an LLDPDU (the payload of an ethertype 0x88cc frame,
// after the Ethernet header). It needs the mandatory chassis ID, port ID
// and TTL TLVs; the port description and system name are kept when
// present, other TLVs are skipped. Interface and MAC are left empty.
func ParseLLDP(pdu []byte) (agentapi.Neighbor, error) {
	var n agentapi.Neighbor
	var seen [3]bool
	for len(pdu) > 0 {
		if len(pdu) < 2 {
			return n, errors.New("lldp: truncated TLV header")
		}
		h := binary.BigEndian.Uint16(pdu)
		typ, l := byte(h>>9), int(h&0x1ff)
		if len(pdu) < 2+l {
			return n, fmt.Errorf("lldp: TLV type %d length %d exceeds the %d bytes left", typ, l, len(pdu)-2)
		}
		v := pdu[2 : 2+l]
		pdu = pdu[2+l:]
		switch typ {
		case tlvEnd:
			pdu = nil
		case tlvChassisID, tlvPortID:
			if l < 2 || l > 256 {
				return n, fmt.Errorf("lldp: TLV type %d: length %d out of range 2..256", typ, l)
			}
			if typ == tlvChassisID {
				n.ChassisIDType, n.ChassisID = idString(chassisTypes, v[0], 4, 5, v[1:])
			} else {
				n.PortIDType, n.PortID = idString(portTypes, v[0], 3, 4, v[1:])
			}
			seen[typ-1] = true
		case tlvTTL:
			if l < 2 {
				return n, fmt.Errorf("lldp: TTL TLV length %d, want 2", l)
			}
			n.TTLSeconds = int(binary.BigEndian.Uint16(v))
			seen[2] = true
		case tlvPortDesc:
			n.PortDescription = text(v)
		case tlvSystemName:
			n.SystemName = text(v)
		}
	}
	switch {
	case !seen[0]:
		return n, errors.New("lldp: no chassis ID TLV")
	case !seen[1]:
		return n, errors.New("lldp: no port ID TLV")
	case !seen[2]:
		return n, errors.New("lldp: no TTL TLV")
	}
	return n, nil
}

// idString renders a chassis or port ID by its subtype: a MAC address as
// aa:bb:…, a network address as an IP, printable text as is, anything
// else as hex.
func idString(types map[byte]string, sub, macType, addrType byte, v []byte) (string, string) {
	name, ok := types[sub]
	if !ok {
		name = fmt.Sprintf("subtype-%d", sub)
	}
	switch {
	case sub == macType && len(v) == 6:
		return name, net.HardwareAddr(v).String()
	case sub == addrType && len(v) >= 2:
		// First byte: IANA address family (1 IPv4, 2 IPv6).
		if a, ok := netip.AddrFromSlice(v[1:]); ok && (v[0] == 1 && a.Is4() || v[0] == 2 && a.Is6()) {
			return name, a.String()
		}
		return name, hex.EncodeToString(v)
	}
	if s, ok := printable(v); ok {
		return name, s
	}
	return name, hex.EncodeToString(v)
}

func printable(v []byte) (string, bool) {
	s := string(v)
	for _, r := range s {
		if r == unicode.ReplacementChar || !unicode.IsPrint(r) {
			return "", false
		}
	}
	return s, true
}

// text keeps the printable characters of a free-text TLV.
func text(v []byte) string {
	return strings.Map(func(r rune) rune {
		if r == unicode.ReplacementChar || !unicode.IsPrint(r) {
			return -1
		}
		return r
	}, string(v))
}
