// Package boot is the rack's HTTP boot server: it renders the iPXE script a
// machine boots from (by its purpose: discover, commission, deploy, erase,
// local, off), serves cloud-init NoCloud metadata (meta-data, user-data,
// vendor-data and network-config version 2), and the API the machine agent
// in the ephemeral image talks to (task, facts, progress, result; the
// wire types and purposes are in spec/agentapi). Every
// machine-specific endpoint needs the machine's boot token: a random
// secret minted once per network-boot power task, at the boot's first
// script fetch, bound to the fetching address and stored only as a
// SHA-256 (the deployed OS's report-in has a token of its own).
// The rack agent implements Backend; see docs/boot.md.
package boot
