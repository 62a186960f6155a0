//go:build !linux

package dhcp

import (
	"context"
	"errors"
	"net"
	"net/netip"
)

// listenUDP needs SO_BINDTODEVICE: the server runs on Linux only.
func listenUDP(context.Context, string, int) (*net.UDPConn, error) {
	return nil, errors.New("the DHCP server needs Linux (SO_BINDTODEVICE)")
}

func pktinfoDst([]byte) netip.Addr { return netip.Addr{} }
