// Package spec defines Kiln's resource kinds (Rack, Subnet, Image, Machine,
// Profile), decodes them strictly from YAML with file:line:column positions,
// applies profiles and defaults, and validates a whole inventory, reporting
// every problem rather than the first. It imports nothing else of Kiln's.
//
// Load reads every *.yaml and *.yml file below the root of an fs.FS; the
// result is an Inventory of resolved objects and a list of Problems. An
// inventory with any error-severity Problem must not be applied.
package spec
