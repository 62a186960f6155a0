// Package facts collects a machine's hardware facts (CPU, memory, DMI,
// disks, NICs, LLDP neighbours) for the machine agent. Collectors follow
// node_exporter's layout: one per area, in per-OS files, each reading from
// configurable roots (sysfs, procfs, /dev) so that fixture trees under
// testdata/ drive the tests. They fill in agentapi.Facts, the shape the
// agent reports (spec/agentapi, documented in docs/agent.md), which only
// grows.
package facts
