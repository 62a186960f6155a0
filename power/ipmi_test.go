package power

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bougou/go-ipmi/pkg/types"
	"github.com/kilnhq/kiln/spec/kilntest"
)

// The integration tests run OpenIPMI's ipmi_sim (Debian package openipmi)
// as the BMC, and ipmitool (Debian package ipmitool) as an independent
// client that must agree with what the driver did. ipmi_sim's chassis is
// wired to a shell script (lan.conf chassis_control) that keeps the power
// state and boot device in files the tests read.

const (
	ipmiSimAdminPassword = "Adm1n-s3cret-pw"
	ipmiSimOperPassword  = "0per-s3cret-pw"
	ipmiSimUserPassword  = "Us3r-s3cret-pw"
)

type ipmiSim struct {
	t     *testing.T
	dir   string
	host  string // IP address it listens on
	port  int
	debug bool
	cmd   *exec.Cmd
	stdin io.Closer
	done  chan struct{}
}

// startIPMISim starts ipmi_sim on a free UDP port of 127.0.0.1 and waits
// until it answers. debug makes ipmi_sim log every message it receives.
func startIPMISim(t *testing.T, debug bool) *ipmiSim {
	t.Helper()
	return startIPMISimOn(t, "127.0.0.1", debug)
}

func startIPMISimOn(t *testing.T, host string, debug bool) *ipmiSim {
	t.Helper()
	if _, err := exec.LookPath("ipmi_sim"); err != nil {
		t.Skip("ipmi_sim not installed (Debian package openipmi): skipping IPMI integration test")
	}
	s := &ipmiSim{t: t, dir: t.TempDir(), host: host, debug: debug}
	s.writeFile("power", "0\n")
	s.writeFile("boot", "none\n")
	s.writeFile("chassis.sh", ipmiSimChassisScript)
	if err := os.Chmod(s.path("chassis.sh"), 0o755); err != nil {
		t.Fatal(err)
	}
	s.writeFile("sim.emu", "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 0x09 0x08 0x9f 0x1291 0xf02\nmc_enable 0x20\n")
	if err := os.Mkdir(s.path("state"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.stop)
	var err error
	for range 3 { // another process may take the port between probe and bind
		s.port = ipmiFreeUDPPort(t, host)
		s.writeFile("lan.conf", s.lanConf())
		if err = s.start(); err == nil {
			return s
		}
		s.stop()
	}
	t.Fatalf("ipmi_sim did not come up: %v\n%s", err, s.read("sim.log"))
	return nil
}

func (s *ipmiSim) lanConf() string {
	auths := "none md2 md5 straight"
	return fmt.Sprintf(`name "kiln-test"
set_working_mc 0x20
  startlan 1
    addr %[7]s %[1]d
    priv_limit admin
    allowed_auths_callback %[2]s
    allowed_auths_user %[2]s
    allowed_auths_operator %[2]s
    allowed_auths_admin %[2]s
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "%[3]s 0x20"
  user 2 true "admin"  "%[4]s" admin    10 %[2]s
  user 3 true "oper"   "%[5]s" operator 10 %[2]s
  user 4 true "viewer" "%[6]s" user     10 %[2]s
`, s.port, auths, s.path("chassis.sh"), ipmiSimAdminPassword, ipmiSimOperPassword, ipmiSimUserPassword, s.host)
}

// ipmiSimChassisScript is ipmi_sim's chassis_control program:
// chassis.sh <mc> get <param>... prints "<param>:<value>" lines;
// chassis.sh <mc> set <param> <value>... changes them.
const ipmiSimChassisScript = `#!/bin/sh
dir=$(dirname "$0")
shift
op=$1
shift
echo "$op $*" >> "$dir/chassis.log"
put() { echo "$2" > "$dir/$1.tmp" && mv "$dir/$1.tmp" "$dir/$1"; }
case $op in
get)
	for p in "$@"; do
		case $p in
		power|boot) v=$(cat "$dir/$p") ;;
		*) v=0 ;;
		esac
		echo "$p:$v"
	done ;;
set)
	while [ $# -ge 2 ]; do
		case $1 in
		power|boot) put "$1" "$2" ;;
		shutdown) put power 0 ;; # the OS obeys the ACPI request at once
		esac
		shift 2
	done ;;
esac
exit 0
`

func (s *ipmiSim) start() error {
	args := []string{"-c", s.path("lan.conf"), "-f", s.path("sim.emu"), "-s", s.path("state")}
	if s.debug {
		args = append(args, "-d") // needs stdio: give it a pipe that stays open
	} else {
		args = append(args, "-n")
	}
	log, err := os.OpenFile(s.path("sim.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	s.cmd = exec.Command("ipmi_sim", args...)
	s.cmd.Dir = s.dir
	s.cmd.Stdout, s.cmd.Stderr = log, log
	if s.debug {
		w, err := s.cmd.StdinPipe()
		if err != nil {
			return err
		}
		s.stdin = w
	}
	if err := s.cmd.Start(); err != nil {
		return err
	}
	s.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(s.cmd, s.done)
	return s.waitReady(15 * time.Second)
}

// waitReady retries Status, each try with a short timeout, until ipmi_sim
// answers or the deadline passes.
func (s *ipmiSim) waitReady(within time.Duration) error {
	deadline := time.Now().Add(within)
	var err error
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return fmt.Errorf("ipmi_sim exited")
		default:
		}
		d, derr := newIPMI(s.target("admin", ipmiSimAdminPassword, map[string]string{"cipherSuite": "3"}))
		if derr != nil {
			return derr
		}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		_, err = d.Status(ctx)
		cancel()
		d.Close()
		if err == nil {
			return nil
		}
		select { // poll interval; the next try starts at once if ipmi_sim dies
		case <-s.done:
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("no answer within %v: %v", within, err)
}

func (s *ipmiSim) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	if s.stdin != nil {
		s.stdin.Close()
		s.stdin = nil
	}
	s.cmd = nil
}

// restart stops ipmi_sim and starts it again on the same port, which
// drops every session, as a BMC reset does.
func (s *ipmiSim) restart() {
	s.t.Helper()
	s.stop()
	if err := s.start(); err != nil {
		s.t.Fatalf("restarting ipmi_sim: %v\n%s", err, s.read("sim.log"))
	}
}

func (s *ipmiSim) path(name string) string { return filepath.Join(s.dir, name) }

func (s *ipmiSim) writeFile(name, content string) {
	s.t.Helper()
	if err := os.WriteFile(s.path(name), []byte(content), 0o644); err != nil {
		s.t.Fatal(err)
	}
}

func (s *ipmiSim) read(name string) string {
	b, _ := os.ReadFile(s.path(name))
	return string(b)
}

// power and boot are the chassis state as ipmi_sim's control script holds it.
func (s *ipmiSim) power() string { return strings.TrimSpace(s.read("power")) }
func (s *ipmiSim) boot() string  { return strings.TrimSpace(s.read("boot")) }

// chassisLog returns the control script's log and empties it.
func (s *ipmiSim) chassisLog() string {
	l := s.read("chassis.log")
	_ = os.Remove(s.path("chassis.log"))
	return l
}

func (s *ipmiSim) addr() string { return net.JoinHostPort(s.host, strconv.Itoa(s.port)) }

func (s *ipmiSim) target(user, password string, opts map[string]string) Target {
	return Target{Machine: "node-01", Driver: "ipmi", Address: s.addr(), Username: user, Password: password, Options: opts}
}

func (s *ipmiSim) driver(t *testing.T, user, password string, opts map[string]string) Driver {
	t.Helper()
	d, err := newIPMI(s.target(user, password, opts))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// ipmitool runs ipmitool against the simulator as admin, the independent
// peer, over IPMI 2.0 with cipher suite 3 ("lanplus") or IPMI 1.5 ("lan").
func (s *ipmiSim) ipmitool(t *testing.T, iface string, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("ipmitool"); err != nil {
		t.Skip("ipmitool not installed (Debian package ipmitool)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	base := []string{"-I", iface, "-H", s.host, "-p", strconv.Itoa(s.port), "-U", "admin", "-E", "-N", "1", "-R", "3"}
	if iface == "lanplus" {
		base = append(base, "-C", "3")
	}
	cmd := exec.CommandContext(ctx, "ipmitool", append(base, args...)...)
	cmd.Env = append(os.Environ(), "IPMI_PASSWORD="+ipmiSimAdminPassword)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("ipmitool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func ipmiFreeUDPPort(t *testing.T, host string) int {
	t.Helper()
	c, err := net.ListenPacket("udp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

func ipmiTestCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func ipmiWantStatus(t *testing.T, d Driver, want State) {
	t.Helper()
	got, err := d.Status(ipmiTestCtx(t, 10*time.Second))
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if got != want {
		t.Fatalf("Status = %s, want %s", got, want)
	}
}

func TestIPMIPowerRoundTrips(t *testing.T) {
	t.Parallel()
	s := startIPMISim(t, false)
	d := s.driver(t, "admin", ipmiSimAdminPassword, nil)
	ctx := ipmiTestCtx(t, 60*time.Second)
	s.chassisLog()

	ipmiWantStatus(t, d, Off)

	if err := d.PowerOn(ctx); err != nil {
		t.Fatalf("PowerOn: %v", err)
	}
	if p := s.power(); p != "1" {
		t.Fatalf("after PowerOn the chassis power is %q", p)
	}
	ipmiWantStatus(t, d, On)
	if out := s.ipmitool(t, "lanplus", "chassis", "power", "status"); !strings.Contains(out, "Chassis Power is on") {
		t.Fatalf("ipmitool disagrees after PowerOn: %s", out)
	}
	s.chassisLog()
	if err := d.PowerOn(ctx); err != nil {
		t.Fatalf("PowerOn when on: %v", err)
	}
	if l := s.chassisLog(); strings.Contains(l, "set") {
		t.Fatalf("PowerOn when on changed the chassis:\n%s", l)
	}

	if err := d.PowerOff(ctx, true); err != nil {
		t.Fatalf("PowerOff(hard): %v", err)
	}
	if l := s.chassisLog(); !strings.Contains(l, "set power 0") || s.power() != "0" {
		t.Fatalf("hard PowerOff did not power down: power %q, log:\n%s", s.power(), l)
	}
	ipmiWantStatus(t, d, Off)
	if out := s.ipmitool(t, "lanplus", "chassis", "power", "status"); !strings.Contains(out, "Chassis Power is off") {
		t.Fatalf("ipmitool disagrees after PowerOff: %s", out)
	}

	if err := d.PowerOff(ctx, false); err != nil {
		t.Fatalf("PowerOff(soft) when off: %v", err)
	}
	if l := s.chassisLog(); strings.Contains(l, "set") {
		t.Fatalf("PowerOff when off changed the chassis:\n%s", l)
	}

	// ipmitool powers on; the driver sees it; a soft power off is an ACPI
	// request ("shutdown"), not a power down.
	s.ipmitool(t, "lanplus", "chassis", "power", "on")
	ipmiWantStatus(t, d, On)
	s.chassisLog()
	if err := d.PowerOff(ctx, false); err != nil {
		t.Fatalf("PowerOff(soft): %v", err)
	}
	if l := s.chassisLog(); !strings.Contains(l, "set shutdown 1") || strings.Contains(l, "set power") {
		t.Fatalf("soft PowerOff: want an ACPI shutdown request, log:\n%s", l)
	}
	ipmiWantStatus(t, d, Off)

	// Cycle when off = power up.
	if err := d.PowerCycle(ctx); err != nil {
		t.Fatalf("PowerCycle when off: %v", err)
	}
	if l := s.chassisLog(); !strings.Contains(l, "set power 1") || strings.Contains(l, "set power 0") {
		t.Fatalf("PowerCycle when off: want power up only, log:\n%s", l)
	}
	ipmiWantStatus(t, d, On)

	// Cycle when on: ipmi_sim powers down, then up a second later.
	if err := d.PowerCycle(ctx); err != nil {
		t.Fatalf("PowerCycle when on: %v", err)
	}
	kilntest.Eventually(t, 15*time.Second, "power back on after cycle", func() bool {
		l := s.read("chassis.log")
		return strings.Contains(l, "set power 0") && strings.Contains(l, "set power 1") && s.power() == "1"
	})
	if l := s.chassisLog(); !strings.Contains(l, "set power 0") {
		t.Fatalf("PowerCycle when on did not power down first, log:\n%s", l)
	}
	ipmiWantStatus(t, d, On)
	if out := s.ipmitool(t, "lanplus", "chassis", "power", "status"); !strings.Contains(out, "Chassis Power is on") {
		t.Fatalf("ipmitool disagrees after PowerCycle: %s", out)
	}
}

func TestIPMISetBoot(t *testing.T) {
	t.Parallel()
	s := startIPMISim(t, false)
	d := s.driver(t, "admin", ipmiSimAdminPassword, nil)
	ctx := ipmiTestCtx(t, 60*time.Second)

	for _, tc := range []struct {
		boot         Boot
		sim          string // ipmi_sim's name of the device
		ipmitoolSays string // how ipmitool prints it
	}{
		{Boot{Device: Network}, "pxe", "Force PXE"},
		{Boot{Device: Disk, UEFI: true}, "default", "Force Boot from default Hard-Drive"},
		{Boot{Device: Network, Persistent: true}, "pxe", "Force PXE"},
		{Boot{Device: Disk, Persistent: true, UEFI: true}, "default", "Force Boot from default Hard-Drive"},
	} {
		if err := d.SetBoot(ctx, tc.boot); err != nil {
			t.Fatalf("SetBoot(%+v): %v", tc.boot, err)
		}
		if got := s.boot(); got != tc.sim {
			t.Fatalf("SetBoot(%+v): ipmi_sim boot device %q, want %q", tc.boot, got, tc.sim)
		}
		if out := s.ipmitool(t, "lanplus", "chassis", "bootparam", "get", "5"); !strings.Contains(out, tc.ipmitoolSays) {
			t.Fatalf("SetBoot(%+v): ipmitool reads:\n%s", tc.boot, out)
		}
	}

	err := d.SetBoot(ctx, Boot{Device: "cdrom"})
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("SetBoot(cdrom) = %v, want ErrUnsupported", err)
	}
}

// TestIPMIBootFlagsOnTheWire compares the boot flags the driver sends with
// what ipmitool sends for the same request, as ipmi_sim received them
// (ipmi_sim keeps only the device, not the persistent and EFI bits). Both
// use IPMI 1.5, which authenticates but does not encrypt, so ipmi_sim's
// debug log shows the payloads.
func TestIPMIBootFlagsOnTheWire(t *testing.T) {
	t.Parallel()
	s := startIPMISim(t, true)
	d := s.driver(t, "admin", ipmiSimAdminPassword, map[string]string{"interface": "lan"})
	ctx := ipmiTestCtx(t, 60*time.Second)

	for _, tc := range []struct {
		boot     Boot
		ipmitool []string
		want     string
	}{
		{Boot{Device: Network}, []string{"pxe"}, "80 04 00 00 00"},
		{Boot{Device: Network, Persistent: true, UEFI: true}, []string{"pxe", "options=persistent,efiboot"}, "e0 04 00 00 00"},
		{Boot{Device: Disk, UEFI: true}, []string{"disk", "options=efiboot"}, "a0 08 00 00 00"},
		{Boot{Device: Disk, Persistent: true}, []string{"disk", "options=persistent"}, "c0 08 00 00 00"},
	} {
		before := len(ipmiBootFlagsSent(s.read("sim.log")))
		if err := d.SetBoot(ctx, tc.boot); err != nil {
			t.Fatalf("SetBoot(%+v): %v", tc.boot, err)
		}
		s.ipmitool(t, "lan", append([]string{"chassis", "bootdev"}, tc.ipmitool...)...)
		var sent []string
		kilntest.Eventually(t, 5*time.Second, "ipmi_sim logs both requests", func() bool {
			sent = ipmiBootFlagsSent(s.read("sim.log"))[before:]
			return len(sent) >= 2
		})
		if sent[0] != sent[1] || sent[0] != tc.want {
			t.Fatalf("SetBoot(%+v) sent boot flags %q, ipmitool %s sent %q, want %q", tc.boot, sent[0], strings.Join(tc.ipmitool, " "), sent[1], tc.want)
		}
	}
}

// bootFlagsSent finds Set System Boot Options (NetFn chassis, command 08h)
// requests for parameter 5 in ipmi_sim's debug log and returns their data.
// A request reads rsAddr 20, NetFn/LUN 00, checksum e0, rqAddr 81, rqSeq,
// command 08, parameter 05, five data bytes.
func ipmiBootFlagsSent(log string) []string {
	re := regexp.MustCompile(`\b20 00 e0 81 [0-9a-f]{2} 08 05 ((?:[0-9a-f]{2} ){4}[0-9a-f]{2})`)
	var out []string
	for _, m := range re.FindAllStringSubmatch(log, -1) {
		out = append(out, m[1])
	}
	return out
}

func TestIPMIAuthFailures(t *testing.T) {
	t.Parallel()
	s := startIPMISim(t, false)
	const wrong = "Wr0ng-passw0rd-xyz"
	for _, tc := range []struct {
		name, user, password string
		opts                 map[string]string
	}{
		{"lanplus wrong password", "admin", wrong, nil},
		{"lanplus suite 3 wrong password", "admin", wrong, map[string]string{"cipherSuite": "3"}},
		{"lanplus unknown user", "nobody", ipmiSimAdminPassword, nil},
		{"lan wrong password", "admin", wrong, map[string]string{"interface": "lan"}},
		{"lan unknown user", "nobody", ipmiSimAdminPassword, map[string]string{"interface": "lan"}},
		{"auto wrong password", "admin", wrong, map[string]string{"interface": "auto"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := s.driver(t, tc.user, tc.password, tc.opts)
			start := time.Now()
			err := d.PowerOn(ipmiTestCtx(t, 4*time.Second))
			if !errors.Is(err, ErrAuth) || !errors.Is(err, ErrPermanent) {
				t.Fatalf("PowerOn = %v, want ErrAuth", err)
			}
			for _, pw := range []string{tc.password, ipmiSimAdminPassword, wrong} {
				if strings.Contains(err.Error(), pw) {
					t.Fatalf("error shows a password: %v", err)
				}
			}
			if el := time.Since(start); el > 4*time.Second {
				t.Fatalf("took %v", el)
			}
			t.Logf("%v (%v)", err, time.Since(start).Round(time.Millisecond))
			if s.power() != "0" {
				t.Fatal("the chassis was powered on")
			}
		})
	}
}

func TestIPMIPrivilege(t *testing.T) {
	t.Parallel()
	s := startIPMISim(t, false)
	ctx := ipmiTestCtx(t, 60*time.Second)

	// An operator account with the default privilege. (ipmi_sim gives it
	// an operator session when ADMINISTRATOR is asked for; BMCs that
	// refuse make the driver ask for OPERATOR.)
	d := s.driver(t, "oper", ipmiSimOperPassword, nil)
	if err := d.PowerOn(ctx); err != nil {
		t.Fatalf("operator PowerOn: %v", err)
	}
	if err := d.SetBoot(ctx, Boot{Device: Network}); err != nil {
		t.Fatalf("operator SetBoot: %v", err)
	}
	if s.power() != "1" || s.boot() != "pxe" {
		t.Fatalf("operator: power %q boot %q", s.power(), s.boot())
	}

	// A user account may read the state but not change it.
	d = s.driver(t, "viewer", ipmiSimUserPassword, map[string]string{"privilege": "user"})
	ipmiWantStatus(t, d, On)
	err := d.PowerOff(ctx, true)
	if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), "Chassis Control") {
		t.Fatalf("user PowerOff = %v, want ErrAuth naming the command", err)
	}
	t.Log(err)
	if s.power() != "1" {
		t.Fatal("a user account powered the chassis off")
	}
}

func TestIPMIInterfacesAndCipherSuites(t *testing.T) {
	t.Parallel()
	s := startIPMISim(t, false)
	for _, opts := range []map[string]string{
		nil, // lanplus, strongest suite ipmi_sim takes: 3 (it has no SHA-256, so not 17)
		{"cipherSuite": "3"},
		{"cipherSuite": "17,3"},
		{"interface": "lan"},
		{"interface": "auto"},
		{"interface": "auto", "cipherSuite": "3"},
		{"privilege": "OPERATOR"},
	} {
		t.Run(fmt.Sprint(opts), func(t *testing.T) {
			d := s.driver(t, "admin", ipmiSimAdminPassword, opts)
			ctx := ipmiTestCtx(t, 30*time.Second)
			if err := d.PowerOn(ctx); err != nil {
				t.Fatalf("PowerOn: %v", err)
			}
			ipmiWantStatus(t, d, On)
			if err := d.PowerOff(ctx, true); err != nil {
				t.Fatalf("PowerOff: %v", err)
			}
			ipmiWantStatus(t, d, Off)
			if err := d.SetBoot(ctx, Boot{Device: Disk}); err != nil {
				t.Fatalf("SetBoot: %v", err)
			}
			if s.boot() != "default" {
				t.Fatalf("boot %q", s.boot())
			}
		})
	}

	// A suite ipmi_sim lacks is refused by the BMC: the option is used,
	// and the error is permanent and says so.
	d := s.driver(t, "admin", ipmiSimAdminPassword, map[string]string{"cipherSuite": "17"})
	_, err := d.Status(ipmiTestCtx(t, 20*time.Second))
	if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "cipher suite 17") {
		t.Fatalf("cipher suite 17 against ipmi_sim: %v, want ErrUnsupported", err)
	}
	t.Log(err)
}

func TestIPMIIPv6(t *testing.T) {
	t.Parallel()
	if c, err := net.ListenPacket("udp", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	} else {
		c.Close()
	}
	s := startIPMISimOn(t, "::1", false)
	if !strings.HasPrefix(s.addr(), "[::1]:") {
		t.Fatalf("address %s", s.addr())
	}
	d := s.driver(t, "admin", ipmiSimAdminPassword, nil)
	if err := d.PowerOn(ipmiTestCtx(t, 10*time.Second)); err != nil {
		t.Fatalf("PowerOn over IPv6: %v", err)
	}
	if s.power() != "1" {
		t.Fatal("not powered on")
	}
	if out := s.ipmitool(t, "lanplus", "chassis", "power", "status"); !strings.Contains(out, "Chassis Power is on") {
		t.Fatalf("ipmitool disagrees: %s", out)
	}
}

func TestIPMIReconnectsAfterSessionLoss(t *testing.T) {
	t.Parallel()
	s := startIPMISim(t, false)
	d := s.driver(t, "admin", ipmiSimAdminPassword, nil)
	// The session's packet timeout follows the first call's deadline: with
	// 2 s, 250 ms, so the lost session is noticed after 1 s.
	if _, err := d.Status(ipmiTestCtx(t, 2*time.Second)); err != nil {
		t.Fatal(err)
	}
	s.restart() // forgets every session
	ctx := ipmiTestCtx(t, 20*time.Second)
	if err := d.PowerOn(ctx); err != nil {
		t.Fatalf("PowerOn after the BMC dropped the session: %v", err)
	}
	if s.power() != "1" {
		t.Fatal("not powered on")
	}
	ipmiWantStatus(t, d, On)
}

func TestIPMIUnreachable(t *testing.T) {
	t.Parallel()
	target := func(addr string) Driver {
		d, err := newIPMI(Target{Machine: "node-01", Driver: "ipmi", Address: addr, Username: "admin", Password: ipmiSimAdminPassword})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		return d
	}
	check := func(t *testing.T, err error, start time.Time, within time.Duration) {
		t.Helper()
		el := time.Since(start)
		if err == nil {
			t.Fatal("no error")
		}
		if errors.Is(err, ErrPermanent) {
			t.Fatalf("unreachable BMC: permanent error %v", err)
		}
		if strings.Contains(err.Error(), ipmiSimAdminPassword) {
			t.Fatalf("error shows the password: %v", err)
		}
		if el > within {
			t.Fatalf("returned after %v, want within %v: %v", el, within, err)
		}
		t.Logf("%v (%v)", err, el.Round(time.Millisecond))
	}

	t.Run("nobody listens", func(t *testing.T) {
		d := target(net.JoinHostPort("127.0.0.1", strconv.Itoa(ipmiFreeUDPPort(t, "127.0.0.1"))))
		start := time.Now()
		_, err := d.Status(ipmiTestCtx(t, 2*time.Second))
		check(t, err, start, 2200*time.Millisecond)
	})

	// A BMC that never answers: the call ends with its deadline.
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	t.Run("no answer, short deadline", func(t *testing.T) {
		d := target(silent.LocalAddr().String())
		start := time.Now()
		err := d.PowerOn(ipmiTestCtx(t, 300*time.Millisecond))
		check(t, err, start, 700*time.Millisecond)
	})
	t.Run("no answer, cancelled", func(t *testing.T) {
		d := target(silent.LocalAddr().String())
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(200*time.Millisecond, cancel)
		start := time.Now()
		err := d.SetBoot(ctx, Boot{Device: Network})
		check(t, err, start, 600*time.Millisecond)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("want context.Canceled in %v", err)
		}
	})
}

func TestIPMIParseAddress(t *testing.T) {
	for _, tc := range []struct {
		in   string
		host string
		port int
		bad  bool
	}{
		{in: "10.0.0.5", host: "10.0.0.5", port: 623},
		{in: "10.0.0.5:6230", host: "10.0.0.5", port: 6230},
		{in: "bmc-01.rack", host: "bmc-01.rack", port: 623},
		{in: "bmc-01.rack:624", host: "bmc-01.rack", port: 624},
		{in: "[fd00::5]:6230", host: "fd00::5", port: 6230},
		{in: "[fd00::5]", host: "fd00::5", port: 623},
		{in: "fd00::5", host: "fd00::5", port: 623},
		{in: "", bad: true},
		{in: "host:0", bad: true},
		{in: "host:99999", bad: true},
		{in: "host:port", bad: true},
		{in: "[fd00::5", bad: true},
		{in: "fd00::5::zz", bad: true},
		{in: "https://bmc", bad: true},
	} {
		host, port, err := ipmiParseAddress(tc.in)
		if tc.bad != (err != nil) || host != tc.host || port != tc.port {
			t.Errorf("ipmiParseAddress(%q) = %q, %d, %v", tc.in, host, port, err)
		}
	}
}

func TestIPMIOptions(t *testing.T) {
	for _, opts := range []map[string]string{
		{"interface": "serial"},
		{"cipherSuite": "0"},
		{"cipherSuite": "20"},
		{"cipherSuite": "three"},
		{"privilege": "root"},
		{"disableBootTimeout": "maybe"},
	} {
		_, err := newIPMI(Target{Address: "10.0.0.5", Username: "admin", Password: "secret-pw", Options: opts})
		if !errors.Is(err, ErrPermanent) {
			t.Errorf("options %v: %v, want a permanent error", opts, err)
		}
	}
	if _, err := newIPMI(Target{Address: "10.0.0.5", Username: "a-very-long-user-name", Password: "x"}); !errors.Is(err, ErrPermanent) {
		t.Errorf("long user name: %v", err)
	}
	d, err := newIPMI(Target{Address: "[fd00::5]:6230", Username: "admin", Options: map[string]string{
		"interface": "AUTO", "cipherSuite": "17, 3", "privilege": "operator", "disableBootTimeout": "false",
	}})
	if err != nil {
		t.Fatal(err)
	}
	id := d.(*ipmiDriver)
	if id.iface != "auto" || fmt.Sprint(id.suites) != "[17 3]" || id.priv != types.PrivilegeLevelOperator || !id.privSet || id.bootTimeout || id.host != "[fd00::5]" || id.port != 6230 {
		t.Fatalf("parsed %+v", id)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestIPMIBootFlags(t *testing.T) {
	for _, tc := range []struct {
		b    Boot
		want []byte
	}{
		{Boot{Device: Network}, []byte{0x80, 0x04, 0, 0, 0}},
		{Boot{Device: Network, Persistent: true}, []byte{0xC0, 0x04, 0, 0, 0}},
		{Boot{Device: Network, UEFI: true}, []byte{0xA0, 0x04, 0, 0, 0}},
		{Boot{Device: Disk, Persistent: true, UEFI: true}, []byte{0xE0, 0x08, 0, 0, 0}},
	} {
		got, err := ipmiBootFlags(tc.b)
		if err != nil || !bytes.Equal(got, tc.want) {
			t.Errorf("ipmiBootFlags(%+v) = % x, %v; want % x", tc.b, got, err, tc.want)
		}
	}
}

func TestIPMICompletionCodes(t *testing.T) {
	for _, tc := range []struct {
		cmd      string
		specific map[uint8]error
		code     uint8
		want     error // nil: transient
	}{
		{"Chassis Control (power up)", nil, 0xC0, nil},
		{"Chassis Control (power up)", nil, 0xC3, nil},
		{"Chassis Control (power up)", nil, 0xC4, nil},
		{"Chassis Control (power up)", nil, 0xFF, nil},
		{"Chassis Control (power up)", nil, 0xD5, nil},
		{"Chassis Control (power up)", nil, 0xC1, ErrUnsupported},
		{"Chassis Control (soft shutdown)", nil, 0xCC, ErrUnsupported},
		{"Chassis Control (power up)", nil, 0xC9, ErrUnsupported},
		{"Chassis Control (power up)", nil, 0xC7, ErrPermanent},
		{"Chassis Control (power up)", nil, 0xD4, ErrAuth},
		{"Set System Boot Options (boot flags)", ipmiBootOptionCodes, 0x80, ErrUnsupported},
		{"Set System Boot Options (boot flags)", ipmiBootOptionCodes, 0x81, nil},
		{"Set System Boot Options (boot flags)", ipmiBootOptionCodes, 0x82, ErrPermanent},
	} {
		err := ipmiCommandError(tc.cmd, tc.specific, types.NewResponseError(types.CompletionCode(tc.code), "x"))
		code := fmt.Sprintf("0x%02X", tc.code)
		if !strings.Contains(err.Error(), tc.cmd) || !strings.Contains(err.Error(), code) {
			t.Errorf("%s %s: message %q does not name the command and code", tc.cmd, code, err)
		}
		if tc.want == nil {
			if errors.Is(err, ErrPermanent) {
				t.Errorf("%s %s: %v is permanent, want transient", tc.cmd, code, err)
			}
		} else if !errors.Is(err, tc.want) || !errors.Is(err, ErrPermanent) {
			t.Errorf("%s %s: %v, want %v", tc.cmd, code, err, tc.want)
		}
	}
	// A reply go-ipmi could not decode: transient, and not a completion code.
	err := ipmiCommandError("Get Chassis Status", nil, types.NewResponseError(0, "unpack response failed"))
	if errors.Is(err, ErrPermanent) || !strings.Contains(err.Error(), "malformed reply") {
		t.Errorf("malformed reply: %v", err)
	}
}

// fakeBootParams records Set System Boot Options writes and answers them
// with the completion codes queued per parameter (0 = success).
type fakeBootParams struct {
	codes  map[uint8][]uint8
	writes []string
}

func (f *fakeBootParams) set(what string, param uint8, data ...byte) error {
	f.writes = append(f.writes, fmt.Sprintf("%d:% x", param, data))
	var code uint8
	if q := f.codes[param]; len(q) > 0 {
		code, f.codes[param] = q[0], q[1:]
	}
	if code == 0xFE { // no answer
		return fmt.Errorf("ipmi Set System Boot Options (%s): IPMI LAN: UDP read timed out", what)
	}
	if code == 0 {
		return nil
	}
	return ipmiCommandError("Set System Boot Options ("+what+")", ipmiBootOptionCodes, types.NewResponseError(types.CompletionCode(code), "x"))
}

func TestIPMIWriteBootSequence(t *testing.T) {
	flags := []byte{0x80, 0x04, 0, 0, 0}
	const (
		lock     = "0:01"
		unlock   = "0:00"
		timeout  = "3:08"
		ack      = "4:01 01"
		bootFlag = "5:80 04 00 00 00"
	)
	for _, tc := range []struct {
		name           string
		codes          map[uint8][]uint8
		disableTimeout bool
		want           []string
		wantErr        error // nil: success; ErrPermanent tested with Is; errAny: transient
	}{
		{"lock supported", nil, true, []string{lock, timeout, ack, bootFlag, unlock}, nil},
		{"no boot timeout change", nil, false, []string{lock, ack, bootFlag, unlock}, nil},
		{"no lock (ipmi_sim)", map[uint8][]uint8{0: {0xCC}, 3: {0xCC}}, true, []string{lock, timeout, ack, bootFlag}, nil},
		{"lock not supported", map[uint8][]uint8{0: {0x80}, 4: {0x80}}, true, []string{lock, timeout, ack, bootFlag}, nil},
		{"stale lock released", map[uint8][]uint8{0: {0x81}}, true, []string{lock, unlock, lock, timeout, ack, bootFlag, unlock}, nil},
		{"lock held", map[uint8][]uint8{0: {0x81, 0, 0x81}}, true, []string{lock, unlock, lock}, errIPMITransient},
		{"busy", map[uint8][]uint8{0: {0xC0}}, true, []string{lock}, errIPMITransient},
		{"boot flags refused, lock released", map[uint8][]uint8{5: {0xCC}}, true, []string{lock, timeout, ack, bootFlag, unlock}, ErrUnsupported},
		{"no answer", map[uint8][]uint8{5: {0xFE}}, true, []string{lock, timeout, ack, bootFlag, unlock}, errIPMITransient},
		{"insufficient privilege", map[uint8][]uint8{0: {0xD4}}, true, []string{lock}, ErrAuth},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeBootParams{codes: tc.codes}
			err := ipmiWriteBoot(context.Background(), f.set, flags, tc.disableTimeout)
			if fmt.Sprint(f.writes) != fmt.Sprint(tc.want) {
				t.Errorf("writes %q, want %q", f.writes, tc.want)
			}
			switch {
			case tc.wantErr == nil:
				if err != nil {
					t.Errorf("error %v", err)
				}
			case tc.wantErr == errIPMITransient:
				if err == nil || errors.Is(err, ErrPermanent) {
					t.Errorf("error %v, want a transient one", err)
				}
			default:
				if !errors.Is(err, tc.wantErr) {
					t.Errorf("error %v, want %v", err, tc.wantErr)
				}
			}
		})
	}
}

var errIPMITransient = errors.New("transient")
