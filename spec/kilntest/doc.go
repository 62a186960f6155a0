// Package kilntest holds the test helpers every package shares: Eventually
// for waiting on a condition, Clock for tests that drive time by hand, and
// Golden for generated files checked in (-update rewrites them).
// It sits under spec because spec is the one package every layer may
// import, and like spec it imports nothing of Kiln. Only tests import it.
package kilntest
