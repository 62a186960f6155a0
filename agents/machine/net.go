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
}
