// Package e2e holds Kiln's end-to-end tests: they build the real binaries
// and drive them as an operator would, as separate processes on real
// sockets. Run them with `make e2e` (build tag e2e). Parts that need root
// (network namespaces, QEMU) skip with a reason when not root.
package e2e
