// Package kilntest holds the test helpers every package shares: Eventually
// for waiting on a condition and Clock for tests that drive time by hand.
// It sits under spec because spec is the one package every layer may
// import, and like spec it imports nothing of Kiln. Only tests import it.
package kilntest
