// Package boottest is an in-memory boot.Backend for tests of the boot
// server and of its clients (the machine agent's racktest): machines,
// subnets and images from an inventory, boot purposes, DHCP leases and
// boot tokens set by the test, and the reports and timeline events the
// server hands it, recorded for the test to read.
package boottest
