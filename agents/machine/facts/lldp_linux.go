package facts

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/kilnhq/kiln/spec/agentapi"
	"golang.org/x/sys/unix"
)

// lldpMulticast is the nearest-bridge address LLDP frames are sent to.
var lldpMulticast = net.HardwareAddr{0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e}

// listenLLDP is how a watch listens on one interface.
var listenLLDP = ListenLLDP

// ListenLLDP waits on one interface for the first valid LLDP frame until
// ctx ends; it returns nil and no error when none came.
func ListenLLDP(ctx context.Context, ifname string) (*agentapi.Neighbor, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("lldp on %s: %w", ifname, err)
	}
	proto := htons(EtherTypeLLDP)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, int(proto))
	if err != nil {
		return nil, fmt.Errorf("lldp on %s: packet socket: %w", ifname, err)
	}
	file := os.NewFile(uintptr(fd), "lldp-"+ifname) // owns fd; reads go through the poller
	defer file.Close()
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
		return nil, fmt.Errorf("lldp on %s: bind: %w", ifname, err)
	}
	mreq := &unix.PacketMreq{Ifindex: int32(ifi.Index), Type: unix.PACKET_MR_MULTICAST, Alen: 6}
	copy(mreq.Address[:], lldpMulticast)
	if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, mreq); err != nil {
		return nil, fmt.Errorf("lldp on %s: join %s: %w", ifname, lldpMulticast, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = file.SetReadDeadline(time.Now()) })
	defer stop()
	if ctx.Err() != nil {
		return nil, nil
	}
	buf := make([]byte, 9000)
	for {
		n, err := file.Read(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded) {
				return nil, nil
			}
			return nil, fmt.Errorf("lldp on %s: read: %w", ifname, err)
		}
		nb, err := ParseLLDP(buf[:n])
		if err != nil {
			continue // not a valid LLDPDU: wait for the next
		}
		nb.Interface, nb.MAC = ifname, ifi.HardwareAddr.String()
		return &nb, nil
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
