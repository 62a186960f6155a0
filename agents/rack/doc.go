// Package rack is the rack agent: one or more per rack, one elected leader
// that runs the rack's network services (DHCP, TFTP, the HTTP and HTTPS
// boot server, the image cache) and its power tasks. Standbys keep a warm
// cache of the rack's desired state and leases, so that they take over
// within a session TTL of the leader's death, and at once when the leader
// steps down because one of its servers stopped. The leader's writes are
// fenced by its election key (inventory/election).
package rack
