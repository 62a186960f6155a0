// Package initramfs builds Kiln's ephemeral boot image: a kernel and a small
// initramfs whose /init is the static machine agent, carrying the kernel
// modules that common NICs and disks need (resolved with their
// dependencies from the kernel's modules folder or a distribution kernel
// package, decompressed, in load order in /etc/kiln/modules), written as a
// reproducible gzipped newc cpio beside a Kiln Image document.
package initramfs
