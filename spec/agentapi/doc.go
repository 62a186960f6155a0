// Package agentapi is the wire protocol between the machine agent, the
// boot server that serves it (netboot/boot, run by the rack agent) and
// the region that decides what a machine does next: the boot purposes,
// the Task the agent fetches, the Report it posts back (facts, progress, a
// result, or the deployed OS reporting in) and the Facts it reports (their
// collectors live in agents/machine/facts; the boot server and the region
// carry facts as opaque JSON, and the CLI and export decode them). It
// imports only spec and the standard library, so the static agent binary
// links neither etcd, gRPC nor zap.
package agentapi
