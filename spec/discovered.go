package spec

import (
	"net"
	"strings"
)

// ReservedMachinePrefix starts the names Kiln gives unknown MACs it
// discovers; no Machine in the source may use it.
const ReservedMachinePrefix = "discovered-"

// DiscoveredName is the name Kiln gives the unknown MAC mac (lower-case,
// colon-separated): "discovered-aa-bb-cc-dd-ee-ff".
func DiscoveredName(mac string) string {
	return ReservedMachinePrefix + strings.ReplaceAll(mac, ":", "-")
}

// IsDiscovered reports whether name is one Kiln gives an unknown MAC.
func IsDiscovered(name string) bool { return strings.HasPrefix(name, ReservedMachinePrefix) }

// DiscoveredMAC is the MAC (lower-case, colon-separated) a discovered
// name stands for; false when name is not a well-formed discovered name.
func DiscoveredMAC(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, ReservedMachinePrefix)
	if !ok {
		return "", false
	}
	mac, err := net.ParseMAC(strings.ReplaceAll(rest, "-", ":"))
	if err != nil || len(mac) != 6 {
		return "", false
	}
	return mac.String(), true
}
