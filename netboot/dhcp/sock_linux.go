//go:build linux

package dhcp

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// listenUDP binds 0.0.0.0:port on one interface (SO_BINDTODEVICE, as
// server4 does): each interface gets its own socket, broadcasts sent on
// it leave by that interface, and requests from other interfaces never
// reach it. IP_PKTINFO gives each request's destination address.
func listenUDP(ctx context.Context, ifname string, port int) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			f := int(fd)
			for _, o := range []struct{ level, opt int }{
				{unix.SOL_SOCKET, unix.SO_REUSEADDR},
				{unix.SOL_SOCKET, unix.SO_BROADCAST},
				{unix.IPPROTO_IP, unix.IP_PKTINFO},
			} {
				if serr = unix.SetsockoptInt(f, o.level, o.opt, 1); serr != nil {
					serr = fmt.Errorf("setsockopt %d/%d: %w", o.level, o.opt, serr)
					return
				}
			}
			if ifname != "" {
				if serr = unix.BindToDevice(f, ifname); serr != nil {
					serr = fmt.Errorf("bind to device: %w", serr)
					return
				}
			}
			// Room for bursts; beyond net.core.rmem_max only with CAP_NET_ADMIN.
			if unix.SetsockoptInt(f, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20) != nil {
				_ = unix.SetsockoptInt(f, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(ctx, "udp4", net.JoinHostPort("0.0.0.0", strconv.Itoa(port)))
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

// pktinfoDst returns the destination address from an IP_PKTINFO control
// message (struct in_pktinfo: ifindex, spec_dst, addr).
func pktinfoDst(oob []byte) netip.Addr {
	if len(oob) == 0 {
		return netip.Addr{}
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.Addr{}
	}
	for _, m := range msgs {
		if m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_PKTINFO && len(m.Data) >= 12 {
			return netip.AddrFrom4([4]byte(m.Data[8:12]))
		}
	}
	return netip.Addr{}
}
