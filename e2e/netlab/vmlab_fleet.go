package netlab

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
)

// Looking at and acting on the lab behind Kiln's back, for the fleet
// tests: an operator's ipmitool, a disk written by hand, the vBMC's log
// of power actions, the rack's power observations, conditions and events.

// IPMITool runs ipmitool (lanplus) against the VM's vBMC from the lab's
// namespace, as an operator would: Kiln does not know.
func (v *VMLab) IPMITool(vm string, args ...string) (string, error) {
	l := v.VM(vm)
	if l.BMC != IPMI {
		return "", fmt.Errorf("netlab: %s's vBMC speaks %s, not IPMI", vm, l.BMC)
	}
	pw, err := os.ReadFile(v.PasswordFile)
	if err != nil {
		return "", err
	}
	host, port, _ := strings.Cut(l.BMCAddr, ":")
	cmd := append([]string{"ipmitool", "-I", "lanplus", "-H", host, "-p", port, "-U", "admin", "-P", strings.TrimSpace(string(pw))}, args...)
	out, err := v.NS.Exec(cmd...)
	if err != nil {
		return out, fmt.Errorf("ipmitool %s to %s's vBMC: %w: %s", strings.Join(args, " "), vm, err, strings.TrimSpace(out))
	}
	return out, nil
}

// WriteDisk copies an image file to the start of the VM's disk (the VM
// must be off), leaving the rest of the disk as it is.
func (v *VMLab) WriteDisk(vm, image string) error {
	src, err := os.Open(image)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(v.VM(vm).Disk, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return fmt.Errorf("write %s onto %s's disk: %w", image, vm, err)
	}
	return dst.Close()
}

// VBMCAction is one thing a vBMC did to its VM, from its log.
type VBMCAction struct {
	At   time.Time
	What string // power on, power off, reset, power cycle: off, boot override, QEMU started, QEMU exited…
	Line string
}

// vbmcActions are the vBMC log messages that change the VM, or a client's
// request to (boot override).
var vbmcActions = regexp.MustCompile(`msg="?(power on|power off|reset|power cycle: off|boot override|one-time boot override used|graceful restart[^"]*|reset with a new boot order[^"]*|QEMU started|QEMU exited)"?`)

// VBMCActions returns what the VM's vBMC did since its log's mark (Proc.Mark;
// 0 for all), oldest first.
func (v *VMLab) VBMCActions(vm string, mark int) []VBMCAction {
	log := v.VM(vm).VBMC.Log()
	return ParseVBMCActions(log[min(mark, len(log)):])
}

// ParseVBMCActions returns the actions in a `kiln vbmc` log, in its order.
func ParseVBMCActions(log string) []VBMCAction {
	var out []VBMCAction
	for _, line := range strings.Split(log, "\n") {
		m := vbmcActions.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		if ts := logTimes(line, m[1]); len(ts) == 1 {
			out = append(out, VBMCAction{At: ts[0], What: m[1], Line: line})
		}
	}
	return out
}

// Outage is when a VM was out of service for a redeploy, by its vBMC's
// log: from the first thing asked of it to the start of its disk boot.
type Outage struct {
	VM       string
	From, To time.Time
	NetBoots int // network boots in between
}

// RedeployOutage is the outage of a VM redeployed once during acts; ok
// is false when acts hold no disk boot.
func RedeployOutage(vm string, acts []VBMCAction) (o Outage, ok bool) {
	o.VM = vm
	for _, a := range acts {
		switch {
		case a.DiskBoot():
			o.To, ok = a.At, true
		case a.What == "QEMU started":
			o.NetBoots++
		}
	}
	if ok {
		o.From = acts[0].At
	}
	return o, ok
}

// Overlap sorts the outages by start and returns the first two that
// overlap (b starting before a's end), if any.
func Overlap(outs []Outage) (a, b Outage, found bool) {
	sort.Slice(outs, func(i, j int) bool { return outs[i].From.Before(outs[j].From) })
	for i := 1; i < len(outs); i++ {
		if outs[i].From.Before(outs[i-1].To) {
			return outs[i-1], outs[i], true
		}
	}
	return a, b, false
}

// DiskBoot reports whether a "QEMU started" action booted the disk
// first (a Hdd boot override) rather than the network or the firmware's
// order.
func (a VBMCAction) DiskBoot() bool {
	return a.What == "QEMU started" && strings.Contains(a.Line, "Hdd first")
}

// PowerObservation reads what the rack's power watch last recorded of the
// machine (powerstate/<rack>/<machine>).
func (v *VMLab) PowerObservation(machine string) (inventory.PowerObservation, error) {
	var o inventory.PowerObservation
	err := v.withStore(func(ctx context.Context, s *inventory.Store) (err error) {
		o, err = inventory.GetJSON[inventory.PowerObservation](ctx, s, s.Keys().PowerState(v.Config.Rack, machine))
		return err
	})
	return o, err
}

// WaitCondition waits until the machine's status has the condition with
// the status ("True", "False"; "" for any) and returns it; want "absent"
// waits for the condition to be gone or False.
func (v *VMLab) WaitCondition(machine, typ, status string, timeout time.Duration) (*inventory.Condition, error) {
	deadline := time.Now().Add(timeout)
	for {
		st, err := v.Status(machine)
		if err == nil {
			c := st.Condition(typ)
			switch {
			case status == "absent" && (c == nil || c.Status == "False"):
				return c, nil
			case status != "absent" && c != nil && (status == "" || c.Status == status):
				return c, nil
			}
		}
		if time.Now().After(deadline) {
			d, _ := v.Kiln("describe", "machine", machine)
			return nil, fmt.Errorf("%s: condition %s not %q after %s (%v): %w\n%s", machine, typ, status, timeout, err, ErrTimeout, d)
		}
		time.Sleep(time.Second)
	}
}

// Events returns the machine's events, oldest first (`kiln events -o json`).
func (v *VMLab) Events(machine string) ([]inventory.Event, error) {
	out, err := v.Kiln("events", machine, "-o", "json")
	if err != nil {
		return nil, err
	}
	var evs []inventory.Event
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var ev inventory.Event
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			return nil, fmt.Errorf("kiln events %s: %w: %q", machine, err, line)
		}
		evs = append(evs, ev)
	}
	return evs, nil
}

// WaitEvent waits until the machine has an event with the reason and
// returns it.
func (v *VMLab) WaitEvent(machine, reason string, timeout time.Duration) (inventory.Event, error) {
	deadline := time.Now().Add(timeout)
	for {
		evs, err := v.Events(machine)
		for _, ev := range evs {
			if ev.Reason == reason {
				return ev, nil
			}
		}
		if time.Now().After(deadline) {
			out, _ := v.Kiln("events", machine)
			return inventory.Event{}, fmt.Errorf("%s: no %s event after %s (%v): %w\n%s", machine, reason, timeout, err, ErrTimeout, out)
		}
		time.Sleep(time.Second)
	}
}

// Statuses returns every machine's status (those that have one), as one
// `kiln get machines -o json` shows them.
func (v *VMLab) Statuses() (map[string]inventory.MachineStatus, error) {
	out, err := v.Kiln("get", "machines", "-o", "json")
	if err != nil {
		return nil, err
	}
	var list struct {
		Items []struct {
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
			Status *inventory.MachineStatus `json:"status"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		return nil, fmt.Errorf("kiln get machines -o json: %w", err)
	}
	sts := map[string]inventory.MachineStatus{}
	for _, it := range list.Items {
		if it.Status != nil {
			sts[it.Metadata.Name] = *it.Status
		}
	}
	return sts, nil
}

// KnownFlags returns the flag and value pairs that `kiln <command>` knows
// (its -h lists them), and logs the ones it does not: a test written
// ahead of a flag runs on the binary before and after the flag exists.
func KnownFlags(t testing.TB, kilnBin, command string, pairs ...string) []string {
	t.Helper()
	help, _ := exec.Command(kilnBin, command, "-h").CombinedOutput()
	var out []string
	for i := 0; i+1 < len(pairs); i += 2 {
		name := strings.TrimLeft(pairs[i], "-")
		if regexp.MustCompile(`(?m)^\s+--?` + regexp.QuoteMeta(name) + `(\s|$)`).Match(help) {
			out = append(out, "--"+name, pairs[i+1])
		} else {
			t.Logf("netlab: kiln %s has no --%s: left out", command, name)
		}
	}
	return out
}
