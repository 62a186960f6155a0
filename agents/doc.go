// Package agents holds the agents that act near and inside the machines:
// agents/rack (a leader per rack running DHCP, TFTP, HTTP boot and the
// region's power tasks) and agents/machine (the in-RAM agent that
// commissions, deploys and erases; cmd/kiln-agent is its binary).
package agents
