//go:build linux

// Package netnstest runs a test inside a network namespace of its own, so
// that tests can make veth pairs, DHCP servers and raw sockets without
// touching the host's network. It needs root; otherwise the test is
// skipped with the reason.
package netnstest

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

const envInside = "KILN_TEST_NETNS"

// Enter reports whether the calling test runs inside its own network
// namespace. Called outside, it re-runs just that test in a child process
// in a new network namespace, reports the child's output and result, and
// returns false: the caller returns at once.
//
//	if !netnstest.Enter(t) {
//		return
//	}
func Enter(t *testing.T) bool {
	t.Helper()
	if os.Getenv(envInside) == t.Name() {
		return true
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a network namespace")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+strings.ReplaceAll(t.Name(), "/", "$/^")+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), envInside+"="+t.Name())
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	out, err := cmd.CombinedOutput()
	t.Logf("in a new network namespace:\n%s", out)
	if err != nil {
		t.Fatalf("test in network namespace: %v", err)
	}
	if !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		if strings.Contains(string(out), "--- SKIP: "+t.Name()) {
			t.Skip("skipped in the network namespace")
		}
		t.Fatalf("test in network namespace did not pass")
	}
	return false
}
