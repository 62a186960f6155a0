// Package httpsrv builds the HTTP servers Kiln opens (the rack's boot
// server, the metrics and admin listeners, the virtual BMC's Redfish) with
// the same limits: ReadHeaderTimeout, IdleTimeout, MaxHeaderBytes and a cap
// on open connections (golang.org/x/net/netutil.LimitListener), so that
// slow or idle clients cannot hold a server's connections or memory. It
// imports nothing of Kiln, so every package may use it.
package httpsrv
