// Package netboot holds the rack's network boot services, one package
// each: dhcp (DHCPv4 with proxyDHCP and relays), tftp (the iPXE binaries),
// boot (the HTTP boot server: iPXE scripts, cloud-init NoCloud metadata,
// the machine agent's API and the OS report-in), cache (the verified
// image cache) and httpsrv (the hardened HTTP server every listener uses). They never import the reconciler or the agents: each asks
// its consumer for a small interface. See docs/boot.md and docs/dhcp.md.
package netboot
