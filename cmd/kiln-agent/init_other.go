//go:build !linux

package main

import (
	"fmt"
	"os"
)

// runInit: the ephemeral image is Linux only.
func runInit() {
	fmt.Fprintln(os.Stderr, "kiln-agent: running as init needs Linux")
	os.Exit(1)
}
