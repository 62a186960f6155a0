// Package netboot will hold DHCPv4 (with proxyDHCP and relays), TFTP, the
// HTTP boot server with its image cache, and cloud-init metadata. It never
// imports the reconciler or the agents: it asks its consumer for small
// lookup interfaces. Not built yet; see docs/architecture.md.
package netboot
