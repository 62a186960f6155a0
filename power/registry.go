package power

import (
	"fmt"
	"sort"
)

// drivers is the one list of power drivers. Its names are the values a
// Machine's bmc.driver may take (spec.BMCDrivers; a test keeps them equal).
var drivers = map[string]Factory{
	"ipmi":    newIPMI,
	"redfish": newRedfish,
	"webhook": newWebhook,
	"manual":  newManual,
}

// New returns the driver for a target.
func New(t Target) (Driver, error) {
	f, ok := drivers[t.Driver]
	if !ok {
		return nil, Permanent(fmt.Errorf("unknown power driver %q (known: %v)", t.Driver, Names()))
	}
	return f(t)
}

// Names lists the registered drivers.
func Names() []string {
	names := make([]string, 0, len(drivers))
	for n := range drivers {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
