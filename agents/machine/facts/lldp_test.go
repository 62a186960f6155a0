package facts

import (
	"encoding/binary"
	"net"
	"strings"
	"testing"

	"github.com/kilnhq/kiln/spec/agentapi"
)

// buildLLDP encodes an LLDPDU: chassis ID as a MAC, port ID as an
// interface name, TTL, then the optional TLVs given.
func buildLLDP(chassis net.HardwareAddr, port string, ttl uint16, extra ...[]byte) []byte {
	b := tlv(nil, tlvChassisID, append([]byte{4}, chassis...))
	b = tlv(b, tlvPortID, append([]byte{5}, port...))
	b = tlv(b, tlvTTL, binary.BigEndian.AppendUint16(nil, ttl))
	for _, e := range extra {
		b = append(b, e...)
	}
	return tlv(b, tlvEnd, nil)
}

func tlv(b []byte, typ byte, v []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(typ)<<9|uint16(len(v)))
	return append(b, v...)
}

func TestParseLLDP(t *testing.T) {
	t.Parallel()
	sw := net.HardwareAddr{0x00, 0x1c, 0x73, 0xaa, 0xbb, 0xcc}
	for name, tc := range map[string]struct {
		pdu     []byte
		want    agentapi.Neighbor
		wantErr string
	}{
		"mac and interface name": {
			pdu: buildLLDP(sw, "Ethernet12", 120, tlv(nil, tlvPortDesc, []byte("to vm-2 eth0")), tlv(nil, tlvSystemName, []byte("leaf-1.rack-a"))),
			want: agentapi.Neighbor{ChassisID: "00:1c:73:aa:bb:cc", ChassisIDType: "mac", PortID: "Ethernet12", PortIDType: "interface-name",
				PortDescription: "to vm-2 eth0", SystemName: "leaf-1.rack-a", TTLSeconds: 120},
		},
		"network address chassis, mac port, unknown TLVs skipped": {
			pdu: func() []byte {
				b := tlv(nil, tlvChassisID, []byte{5, 1, 10, 42, 0, 254})
				b = tlv(b, tlvPortID, append([]byte{3}, sw...))
				b = tlv(b, tlvTTL, []byte{0, 20})
				b = tlv(b, 127, []byte{0x00, 0x80, 0xc2, 1, 0, 1}) // organisationally specific: port VLAN
				return b                                           // no End TLV: tolerated
			}(),
			want: agentapi.Neighbor{ChassisID: "10.42.0.254", ChassisIDType: "network-address", PortID: "00:1c:73:aa:bb:cc", PortIDType: "mac", TTLSeconds: 20},
		},
		"binary local id as hex": {
			pdu: func() []byte {
				b := tlv(nil, tlvChassisID, []byte{7, 0x01, 0xff})
				b = tlv(b, tlvPortID, []byte{7, 'p', '1'})
				return tlv(b, tlvTTL, []byte{0, 1})
			}(),
			want: agentapi.Neighbor{ChassisID: "01ff", ChassisIDType: "local", PortID: "p1", PortIDType: "local", TTLSeconds: 1},
		},
		"empty":          {pdu: nil, wantErr: "no chassis ID"},
		"no port":        {pdu: tlv(tlv(nil, tlvChassisID, []byte{4, 1, 2, 3, 4, 5, 6}), tlvTTL, []byte{0, 1}), wantErr: "no port ID"},
		"no ttl":         {pdu: tlv(tlv(nil, tlvChassisID, []byte{4, 1, 2, 3, 4, 5, 6}), tlvPortID, []byte{5, 'x'}), wantErr: "no TTL"},
		"truncated":      {pdu: buildLLDP(sw, "Ethernet12", 120)[:14], wantErr: "exceeds"},
		"odd byte":       {pdu: []byte{0x02}, wantErr: "truncated TLV header"},
		"short chassis":  {pdu: tlv(nil, tlvChassisID, []byte{4}), wantErr: "out of range"},
		"short ttl":      {pdu: tlv(nil, tlvTTL, []byte{1}), wantErr: "TTL TLV length 1"},
		"after end only": {pdu: append(tlv(nil, tlvEnd, nil), buildLLDP(sw, "x", 1)...), wantErr: "no chassis ID"},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := ParseLLDP(tc.pdu)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to say %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func FuzzParseLLDP(f *testing.F) {
	f.Add(buildLLDP(net.HardwareAddr{1, 2, 3, 4, 5, 6}, "Ethernet1", 120, tlv(nil, tlvSystemName, []byte("sw"))))
	f.Add([]byte{0x02, 0x07, 0x04})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, pdu []byte) {
		n, err := ParseLLDP(pdu)
		if err != nil {
			return
		}
		if n.ChassisIDType == "" || n.PortIDType == "" {
			t.Fatalf("parsed without ID types: %+v", n)
		}
		for _, s := range []string{n.ChassisID, n.PortID, n.PortDescription, n.SystemName} {
			if strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
				t.Fatalf("control characters in %q", s)
			}
		}
	})
}
