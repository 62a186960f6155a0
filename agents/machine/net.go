package machine

import (
	"net"
	"time"
)

// Lease is the address the network bring-up configured.
type Lease struct {
	Interface string
	Address   net.IPNet
	Router    net.IP // nil when the server gave none
	Server    net.IP
}

// NetworkOptions tune BringUpNetwork.
type NetworkOptions struct {
	// Interfaces to try; nil: every link but loopback.
	Interfaces []string
	// Timeout for the whole bring-up; default 60 s.
	Timeout time.Duration
	// LinksUp, if set, is told the links brought up, before DHCP runs on
	// them (the agent starts listening for LLDP there: many switches send
	// a frame as soon as a link comes up).
	LinksUp func(names ...string)
}
