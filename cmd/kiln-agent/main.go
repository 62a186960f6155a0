// Command kiln-agent is the machine agent: /init of the ephemeral image,
// or a normal process for tests and debugging. See docs/agent.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// version is stamped with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	if os.Getpid() == 1 {
		runInit() // never returns: PID 1 powers off, reboots or waits
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stderr)
	stop()
	os.Exit(code)
}
