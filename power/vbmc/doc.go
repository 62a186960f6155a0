// Package vbmc is a virtual BMC: IPMI 2.0 (lanplus, and 1.5 lan) and
// Redfish endpoints that real clients (ipmitool, redfishtool, gofish,
// go-ipmi, Kiln's own power drivers) accept, in front of a Machine.
//
// Two machines exist: QEMU, which starts a qemu-system process at each
// power-on (console in a log file, control over QMP), and Memory, which is
// only state, for protocol tests and for trying Kiln without hardware.
// `kiln vbmc` runs one BMC per VM from flags or a configuration file; tests
// start one in-process with vbmctest.Start.
//
// Both protocols share one boot override (Redfish BootSourceOverride*,
// IPMI boot flags): Once is spent by the next start or reset, Continuous
// stays. QEMU gets it as -boot under SeaBIOS and as the devices' bootindex
// under OVMF, which ignores -boot (QEMUConfig.Args). Faults (latency, errors, hangs, dropped sessions) can be set at
// start, by Go, or through the /vbmc admin API on the Redfish listeners, so
// that clients' retries, timeouts and re-logins can be tested.
//
// Protocol behaviour worth knowing:
//   - IPMI power cycle and hard reset of a machine that is off answer
//     completion code D5h (IPMI 2.0 §28.3); Redfish PowerCycle and
//     ForceRestart power such a machine on.
//   - IPMI soft shutdown and Redfish GracefulShutdown return at once; the
//     machine goes off when the guest complies, or (QEMU) when the
//     graceful timeout forces it.
//   - Redfish sessions end after Config.SessionTimeout idle; HTTP Basic
//     authentication is accepted everywhere a session is.
//   - The boot flags' valid bit never clears by itself after 60 seconds,
//     as some real BMCs' do.
package vbmc
