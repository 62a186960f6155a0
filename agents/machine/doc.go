// Package machine is the machine agent: the program that runs inside a
// machine booted into the ephemeral image. It reads its arguments from
// the kernel command line, brings the network up with DHCP, fetches its
// task (spec/agentapi) from the rack's boot server and carries it out:
// report hardware facts (discover, commission), write an OS image and a
// NoCloud seed to the root disk (deploy), or erase the disks (erase).
// Every outcome, failures included, is reported as a result with a
// reason. See docs/agent.md.
package machine
