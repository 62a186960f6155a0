package netlab

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"sync/atomic"
	"syscall"
	"time"
)

// A simulated top-of-rack switch port: LLDP frames sent into one VM's own
// tap, so that each VM sees its own port (frames sent into the bridge
// would reach every VM alike, and a Linux bridge does not forward LLDP's
// group address anyway).

// LLDPPort is what a switch says of one of its ports in its LLDP frames.
type LLDPPort struct {
	ChassisMAC string // chassis ID, subtype MAC address, e.g. 02:5a:00:00:00:01
	SystemName string // the switch's system name
	Port       string // port ID, subtype interface name, e.g. Ethernet1/1
	PortDesc   string // port description; optional
}

const etherTypeLLDP = 0x88cc

// Frame is the Ethernet frame (to the nearest-bridge group address, from
// the chassis MAC) carrying the port's LLDPDU with a TTL of 120 s.
func (p LLDPPort) Frame() ([]byte, error) {
	mac, err := net.ParseMAC(p.ChassisMAC)
	if err != nil || len(mac) != 6 {
		return nil, fmt.Errorf("lldp: chassis MAC %q: %v", p.ChassisMAC, err)
	}
	b := []byte{0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e}
	b = append(b, mac...)
	b = binary.BigEndian.AppendUint16(b, etherTypeLLDP)
	tlv := func(typ byte, v []byte) {
		b = binary.BigEndian.AppendUint16(b, uint16(typ)<<9|uint16(len(v)))
		b = append(b, v...)
	}
	tlv(1, append([]byte{4}, mac...))               // chassis ID, subtype MAC address
	tlv(2, append([]byte{5}, p.Port...))            // port ID, subtype interface name
	tlv(3, binary.BigEndian.AppendUint16(nil, 120)) // TTL
	if p.PortDesc != "" {
		tlv(4, []byte(p.PortDesc))
	}
	if p.SystemName != "" {
		tlv(5, []byte(p.SystemName))
	}
	tlv(0, nil)
	return b, nil
}

// LLDPSender sends one port's frames into an interface.
type LLDPSender struct {
	sent, failed atomic.Int64
	cancel       context.CancelFunc
	done         chan struct{}
}

// Sent and Failed count the frames sent and the sends that failed (a tap
// whose VM is off has no carrier).
func (s *LLDPSender) Sent() int64   { return s.sent.Load() }
func (s *LLDPSender) Failed() int64 { return s.failed.Load() }

// Stop stops the sender and waits for it.
func (s *LLDPSender) Stop() {
	s.cancel()
	<-s.done
}

// SendLLDP sends the port's LLDP frame out of iface (of this namespace),
// at once and then every interval, through a raw AF_PACKET socket, until
// Stop or the test's end. Out of a tap, a frame goes to the VM on it.
func (n *NS) SendLLDP(iface string, p LLDPPort, every time.Duration) *LLDPSender {
	t := n.Lab.T
	t.Helper()
	frame, err := p.Frame()
	if err != nil {
		t.Fatalf("netlab: %v", err)
	}
	var fd int
	var sa syscall.SockaddrLinklayer
	err = n.Do(func() error {
		ifc, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		fd, err = syscall.Socket(syscall.AF_PACKET, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC, int(htons(etherTypeLLDP)))
		if err != nil {
			return err
		}
		sa = syscall.SockaddrLinklayer{Protocol: htons(etherTypeLLDP), Ifindex: ifc.Index}
		return nil
	})
	if err != nil {
		t.Fatalf("netlab: LLDP on %s in %s: %v", iface, n.Short, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &LLDPSender{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer syscall.Close(fd)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			if err := syscall.Sendto(fd, frame, 0, &sa); err != nil {
				s.failed.Add(1)
			} else {
				s.sent.Add(1)
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(s.Stop)
	return s
}
