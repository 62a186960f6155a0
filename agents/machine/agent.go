package machine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/kilnhq/kiln/agents/machine/facts"
	"github.com/kilnhq/kiln/spec/agentapi"
)

// Agent carries out one boot's task.
type Agent struct {
	Client     *Client
	Deployer   *Deployer
	Eraser     *Eraser
	Collectors []facts.Collector
	// Disks lists the machine's disks (for deploy and erase).
	Disks func() ([]agentapi.Disk, error)
	Arch  string
	Log   *slog.Logger
	// FastTrackPoll is how often, and FastTrackWait how long, the agent
	// asks for its next task after commissioning (fastTrack); 0 means 2 s
	// and DefaultFastTrackWait.
	FastTrackPoll, FastTrackWait time.Duration
	// Console gets the plain status lines an operator (or the e2e test)
	// reads on the serial console: "kiln-agent: result success".
	Console io.Writer
}

// Run fetches the task, carries it out and reports the result. Every
// failure is reported as a result with a reason; Run returns it too, and
// also when the result itself could not be reported.
func (a *Agent) Run(ctx context.Context) error {
	task, err := a.Client.Task(ctx)
	if err != nil {
		return a.finish(ctx, "", err)
	}
	a.say("kiln-agent: task %s for %s (boot %s)", task.Purpose, task.Machine, task.BootID)
	var detail string
	switch task.Purpose {
	case agentapi.PurposeDiscover, agentapi.PurposeCommission:
		detail, err = a.commission(ctx)
	case agentapi.PurposeDeploy:
		detail, err = a.deploy(ctx, task)
	case agentapi.PurposeErase:
		detail, err = a.erase(ctx, task)
	default:
		err = fmt.Errorf("the boot server says purpose %q, which the ephemeral image has nothing to do for", task.Purpose)
	}
	err = a.finish(ctx, detail, err)
	if err != nil || task.Purpose != agentapi.PurposeCommission {
		return err
	}
	return a.fastTrack(ctx)
}

// DefaultFastTrackWait bounds how long the agent, after commissioning,
// asks for a next task: the region decides within seconds whether the
// machine is deployed now (fast track) or powered off, or at the end of
// its fast-track window (at most agentapi.MaxFastTrackWindow). The bound
// is for a region that never decides: the agent then powers off.
const DefaultFastTrackWait = agentapi.MaxFastTrackWindow + time.Minute

// fastTrack asks, after a successful commissioning, for the next task:
// a deploy (the region handed this boot the deployment: no reboot), or
// anything else, which ends the agent's work (the machine is powered off
// by the rack). While the region has not decided, the task still says
// commission.
func (a *Agent) fastTrack(ctx context.Context) error {
	every, within := cmp.Or(a.FastTrackPoll, 2*time.Second), cmp.Or(a.FastTrackWait, DefaultFastTrackWait)
	wait, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	for {
		select {
		case <-wait.Done():
			return nil // no deploy came: the power-off will
		case <-time.After(every):
		}
		task, err := a.Client.Task(wait)
		switch {
		case err != nil:
			continue // the rack may be failing over; the deadline bounds it
		case task.Purpose == agentapi.PurposeCommission:
			continue // not decided yet
		case task.Purpose != agentapi.PurposeDeploy:
			return nil
		}
		a.say("kiln-agent: fast track: task %s for %s (boot %s)", task.Purpose, task.Machine, task.BootID)
		detail, err := a.deploy(ctx, task)
		return a.finish(ctx, detail, err)
	}
}

// finish reports the result; it keeps trying (DefaultRetry) even when ctx
// has ended, so that a failure is not lost.
func (a *Agent) finish(ctx context.Context, detail string, taskErr error) error {
	res := agentapi.Result{Success: taskErr == nil, Reason: detail}
	if taskErr != nil {
		res.Reason = taskErr.Error()
	}
	res.Reason = truncate(res.Reason, 4096)
	if res.Success {
		a.say("kiln-agent: result success")
	} else {
		a.say("kiln-agent: result failure: %s", res.Reason)
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Minute)
	defer cancel()
	if err := a.Client.Result(rctx, res); err != nil {
		a.say("kiln-agent: cannot report the result to %s: %v", a.Client.base, err)
		return errors.Join(taskErr, err)
	}
	a.say("kiln-agent: result reported")
	return taskErr
}

func (a *Agent) commission(ctx context.Context) (string, error) {
	f := facts.Collect(ctx, a.Log, a.Arch, a.Collectors)
	if err := a.Client.Facts(ctx, f); err != nil {
		return "", err
	}
	a.say("kiln-agent: facts reported")
	detail := fmt.Sprintf("facts reported: %d CPUs, %s memory, %d disks, %d NICs, %d LLDP neighbours",
		f.CPU.Count, humanBytes(f.Memory.TotalBytes), len(f.Disks), len(f.NICs), len(f.LLDP))
	if len(f.Errors) > 0 {
		detail += "; collectors failed: " + strings.Join(f.Errors, "; ")
	}
	return detail, nil
}

func (a *Agent) deploy(ctx context.Context, task agentapi.Task) (string, error) {
	disks, err := a.Disks()
	if err != nil {
		return "", err
	}
	d, err := SelectDisk(disks, task.RootDisk)
	if err != nil {
		return "", err
	}
	a.say("kiln-agent: deploying %s to %s (%s)", task.Image.Name, d.Path, humanBytes(d.SizeBytes))
	if err := a.Deployer.Deploy(ctx, task, d); err != nil {
		return "", fmt.Errorf("deploy to %s: %w", d.Path, err)
	}
	return fmt.Sprintf("image %s written to %s with a NoCloud seed", task.Image.Name, d.Path), nil
}

func (a *Agent) erase(ctx context.Context, task agentapi.Task) (string, error) {
	mode := task.Erase
	if mode == "" || mode == EraseNone {
		return "erase mode none: nothing erased", nil
	}
	disks, err := a.Disks()
	if err != nil {
		return "", err
	}
	var done []string
	var errs []error
	for _, d := range disks {
		if d.Removable {
			continue
		}
		a.say("kiln-agent: erasing %s (%s, %s)", d.Path, humanBytes(d.SizeBytes), mode)
		how, err := a.Eraser.Erase(ctx, d, mode)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		done = append(done, how)
	}
	if len(done) == 0 && len(errs) == 0 {
		return "", errors.New("erase: no disks found")
	}
	if len(errs) > 0 {
		if len(done) > 0 {
			errs = append(errs, fmt.Errorf("erased: %s", strings.Join(done, "; ")))
		}
		return "", errors.Join(errs...)
	}
	return "erased " + strings.Join(done, "; "), nil
}

func (a *Agent) say(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if a.Console != nil {
		fmt.Fprintln(a.Console, msg)
		a.Log.Debug(msg)
		return
	}
	a.Log.Info(msg)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - len("…")
	for cut > 0 && s[cut]&0xc0 == 0x80 { // not inside a UTF-8 sequence
		cut--
	}
	return s[:cut] + "…"
}
