// Package power will hold the power Driver interface and its drivers
// (ipmi, redfish, webhook, manual, registered explicitly in one list) and
// the virtual BMC used by the lab and the tests. The driver names match
// spec.BMCDrivers. Not built yet; see docs/architecture.md.
package power
