// Package power turns machines on and off and chooses how they boot next,
// through the machine's BMC: IPMI (go-ipmi, pure Go), Redfish (gofish), a
// webhook for PDUs and anything else with an HTTP API, or "manual" when a
// person must act. Drivers are registered explicitly in one list
// (registry.go); their names match spec.BMCDrivers.
//
// Executor wraps every call in the execution policy the rack agent uses:
// a timeout per call, one call at a time per BMC, a global concurrency
// limit, retries with backoff on transient errors, and a circuit breaker
// for a BMC that keeps failing. Poller reads power state with jitter; the
// rack leader runs it and records what it observes, and the region turns
// that into the PowerDrift condition. Passwords never appear in logs,
// errors or metrics.
//
// The virtual BMC that real IPMI and Redfish clients accept, driving QEMU
// VMs, is in power/vbmc.
package power
