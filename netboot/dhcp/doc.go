// Package dhcp is Kiln's DHCPv4 server for a rack: reservations for known
// machines, discovery of unknown MACs from a dynamic range, PXE and iPXE
// boot options chosen by client architecture, proxyDHCP beside an existing
// server, and relayed requests answered to the relay. It answers from
// memory and persists leases in batches before acknowledging them.
//
// It knows nothing of etcd or elections: the rack agent gives it a Config,
// the leases it knows, a LeaseStore and an EventSink (api.go). Server.Handle
// is the transport-free core (a decoded request in, a reply and its
// destination out); Server.Run binds one socket per interface and feeds it.
// See docs/dhcp.md.
package dhcp
