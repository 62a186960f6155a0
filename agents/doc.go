// Package agents will hold the rack agent (leader per rack, running DHCP,
// TFTP, HTTP boot and power near the machines) and the machine agent that
// commissions, deploys and erases from RAM. Not built yet; see
// docs/architecture.md.
package agents
