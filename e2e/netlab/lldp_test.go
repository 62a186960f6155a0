package netlab

import (
	"testing"

	"github.com/kilnhq/kiln/agents/machine/facts"
)

// The frames the lab's switch sends decode, with the machine agent's own
// parser, to the port they describe.
func TestLLDPFrame(t *testing.T) {
	p := LLDPPort{ChassisMAC: "02:5a:00:00:00:01", SystemName: "tor-1", Port: "Ethernet1/7", PortDesc: "vm-a eno1"}
	b, err := p.Frame()
	if err != nil {
		t.Fatal(err)
	}
	if got := uint16(b[12])<<8 | uint16(b[13]); got != facts.EtherTypeLLDP {
		t.Fatalf("ethertype %#x", got)
	}
	n, err := facts.ParseLLDP(b[14:])
	if err != nil {
		t.Fatal(err)
	}
	if n.ChassisID != "02:5a:00:00:00:01" || n.ChassisIDType != "mac" || n.PortID != "Ethernet1/7" || n.PortIDType != "interface-name" ||
		n.SystemName != "tor-1" || n.PortDescription != "vm-a eno1" || n.TTLSeconds != 120 {
		t.Errorf("decoded %+v", n)
	}
	if _, err := (LLDPPort{ChassisMAC: "nope"}).Frame(); err == nil {
		t.Error("a bad chassis MAC made a frame")
	}
}
