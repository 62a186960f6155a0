package netlab

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/reconciler"
	"github.com/kilnhq/kiln/spec/agentapi"
)

// Looking at the lab as an operator would: the CLI, /metrics, the
// consoles, the vBMCs. Nothing here writes to Kiln's state.

// Phase returns the machine's phase as `kiln get machines NAME` shows it
// ("-" before the region has written a status).
func (v *VMLab) Phase(machine string) (string, error) {
	out, err := v.Kiln("get", "machines", machine)
	if err != nil {
		return "", err
	}
	return tableColumn(out, machine, "PHASE")
}

// tableColumn returns the named column of the row whose first column is
// name, in a table as `kiln get` prints it (no cell holds spaces).
func tableColumn(out, name, column string) (string, error) {
	sc := bufio.NewScanner(strings.NewReader(out))
	idx := -1
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if idx < 0 {
			for i, h := range f {
				if h == column {
					idx = i
				}
			}
			if idx < 0 {
				return "", fmt.Errorf("no %s column in:\n%s", column, out)
			}
			continue
		}
		if len(f) > idx && f[0] == name {
			return f[idx], nil
		}
	}
	return "", fmt.Errorf("no row %s in:\n%s", name, out)
}

// WaitPhase waits until the machine is in the phase, polling
// `kiln get machines` every second, and returns how long it waited. A
// machine that fails (a failed-* phase, unless that is the one wanted)
// ends the wait at once with `kiln describe machine`'s output.
func (v *VMLab) WaitPhase(machine, phase string, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	deadline := start.Add(timeout)
	last := ""
	for {
		got, err := v.Phase(machine)
		if err == nil {
			if got == phase {
				return time.Since(start), nil
			}
			if got != last {
				v.T.Logf("netlab: %s: phase %s (%s)", machine, got, time.Since(start).Round(time.Second))
				last = got
			}
			if strings.HasPrefix(got, reconciler.FailedPrefix) && !strings.HasPrefix(phase, reconciler.FailedPrefix) {
				d, _ := v.Kiln("describe", "machine", machine)
				return time.Since(start), fmt.Errorf("%s is %s while waiting for %s:\n%s", machine, got, phase, d)
			}
		}
		if time.Now().After(deadline) {
			d, _ := v.Kiln("describe", "machine", machine)
			return time.Since(start), fmt.Errorf("%s not %s after %s (last %q, %v): %w\n%s", machine, phase, timeout, got, err, ErrTimeout, d)
		}
		time.Sleep(time.Second)
	}
}

// MustWaitPhase is WaitPhase failing the test (with the VM's console) on
// error.
func (v *VMLab) MustWaitPhase(machine, phase string, timeout time.Duration) time.Duration {
	v.T.Helper()
	d, err := v.WaitPhase(machine, phase, timeout)
	if err != nil {
		console := ""
		for _, vm := range v.VMs {
			if vm.Name == machine {
				console = tail(v.Console(machine), 4000)
			}
		}
		v.T.Fatalf("netlab: %v\nconsole of %s:\n%s", err, machine, console)
	}
	return d
}

// Console returns the VM's serial console of its current (or last) boot.
func (v *VMLab) Console(vm string) string {
	b, _ := os.ReadFile(v.VM(vm).SerialLog())
	return string(b)
}

// WaitConsole waits until the VM's console of its current boot matches
// the regular expression and returns the matching line.
func (v *VMLab) WaitConsole(vm, re string, timeout time.Duration) (string, error) {
	rx, err := regexp.Compile("(?m)" + re)
	if err != nil {
		return "", err
	}
	deadline := time.Now().Add(timeout)
	for {
		s := v.Console(vm)
		if loc := rx.FindStringIndex(s); loc != nil {
			start := strings.LastIndexByte(s[:loc[0]], '\n') + 1
			end := strings.IndexByte(s[loc[0]:], '\n')
			if end < 0 {
				return s[start:], nil
			}
			return strings.TrimRight(s[start:loc[0]+end], "\r"), nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("console of %s did not show /%s/ within %s: %w; its end:\n%s", vm, re, timeout, ErrTimeout, tail(s, 3000))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// Metrics scrapes the /metrics of the region leader (kiln_region_leader
// 1), or of the first running server.
func (v *VMLab) Metrics() (string, error) {
	var first string
	var errs error
	for i, s := range v.Servers {
		if s.Exited() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		m, err := v.HTTPGet(ctx, v.MetricsURL(i))
		cancel()
		if err != nil {
			errs = errors.Join(errs, err)
			continue
		}
		if MetricValue(m, "kiln_region_leader") == "1" {
			return m, nil
		}
		if first == "" {
			first = m
		}
	}
	if first == "" {
		return "", fmt.Errorf("no server's /metrics answered: %w", errs)
	}
	return first, nil
}

// MetricValue returns one sample's value from a /metrics text ("" when
// absent); series is the name with its labels as the text spells them,
// e.g. kiln_machines{phase="ready",rack="lab-r1"}.
func MetricValue(metrics, series string) string {
	for _, line := range strings.Split(metrics, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// Status reads the machine's status (phase, facts, results…) from etcd,
// read-only, as `kiln describe` does.
func (v *VMLab) Status(machine string) (inventory.MachineStatus, error) {
	var st inventory.MachineStatus
	err := v.withStore(func(ctx context.Context, s *inventory.Store) (err error) {
		st, err = inventory.GetJSON[inventory.MachineStatus](ctx, s, s.Keys().MachineStatus(machine))
		return err
	})
	return st, err
}

// withStore runs f with a read-only view of the lab's etcd, reached from
// inside the lab's namespace, and a 15-s deadline.
func (v *VMLab) withStore(f func(context.Context, *inventory.Store) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(strings.ReplaceAll(v.EtcdEndpoints(), "http://", ""), ","), DialTimeout: 10 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return v.DialContext(ctx, "tcp", addr)
		})}})
	if err != nil {
		return err
	}
	defer cli.Close()
	return f(ctx, inventory.NewStore(cli, "", slog.New(slog.DiscardHandler)))
}

// Facts returns the hardware facts the machine agent reported.
func (v *VMLab) Facts(machine string) (*agentapi.Facts, error) {
	st, err := v.Status(machine)
	if err != nil {
		return nil, err
	}
	if len(st.Facts) == 0 {
		return nil, fmt.Errorf("%s has no facts (phase %s)", machine, st.Phase)
	}
	f := new(agentapi.Facts)
	if err := json.Unmarshal(st.Facts, f); err != nil {
		return nil, fmt.Errorf("facts of %s: %w", machine, err)
	}
	return f, nil
}

// VBMCState is what a vBMC's admin API says of its VM.
type VBMCState struct {
	Name       string `json:"name"`
	PowerState string `json:"powerState"` // On or Off
	Boot       struct {
		Enabled string `json:"enabled"`
		Target  string `json:"target"`
		UEFI    bool   `json:"uefi"`
	} `json:"boot"`
}

// VBMCState asks the VM's vBMC (its admin API, outside IPMI and Redfish)
// for the power state and boot override.
func (v *VMLab) VBMCState(vm string) (VBMCState, error) {
	var st VBMCState
	b, err := v.vbmcAdmin(vm, http.MethodGet, "/vbmc/state", "")
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(b, &st)
}

// vbmcAdmin calls the VM's vBMC admin API with the BMC's credentials and
// returns the body of a 2xx answer.
func (v *VMLab) vbmcAdmin(vm, method, path, body string) ([]byte, error) {
	pw, err := os.ReadFile(v.PasswordFile)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, fmt.Sprintf("http://127.0.1.%d:8000%s", v.VM(vm).Index, path), strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.SetBasicAuth("admin", strings.TrimSpace(string(pw)))
	client := &http.Client{Transport: &http.Transport{DialContext: v.DialContext}}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return nil, fmt.Errorf("vBMC of %s: %s %s: %s: %s", vm, method, path, resp.Status, b)
	}
	return b, nil
}

// PowerOns returns when the VM's vBMC started QEMU, oldest first (from
// its log's "QEMU started" lines).
func (v *VMLab) PowerOns(vm string) []time.Time {
	return logTimes(v.VM(vm).VBMC.Log(), "QEMU started")
}

// logTimes returns the time= of each slog text line containing msg.
func logTimes(log, msg string) []time.Time {
	var ts []time.Time
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, msg) {
			continue
		}
		f, ok := strings.CutPrefix(line, "time=")
		if !ok {
			continue
		}
		if i := strings.IndexByte(f, ' '); i > 0 {
			if t, err := time.Parse(time.RFC3339Nano, f[:i]); err == nil {
				ts = append(ts, t)
			}
		}
	}
	return ts
}
