package reconciler

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/spec"
	"github.com/kilnhq/kiln/spec/agentapi"
)

// Phases of a machine's lifecycle. A failed phase is FailedPrefix plus
// the phase, e.g. failed-deploying.
const (
	PhaseNew           = "" // no status yet
	PhaseCommissioning = "commissioning"
	PhaseReady         = "ready"
	PhaseDeploying     = "deploying"
	PhaseDeployed      = "deployed"
	PhaseReleasing     = "releasing"
	PhaseErasing       = "erasing"
	PhaseMaintenance   = "maintenance"
	FailedPrefix       = "failed-"
)

// Phases lists every phase a Machine can be in, failed ones included.
var Phases = []string{
	PhaseCommissioning, PhaseReady, PhaseDeploying, PhaseDeployed, PhaseReleasing, PhaseErasing, PhaseMaintenance,
	FailedPrefix + PhaseCommissioning, FailedPrefix + PhaseDeploying, FailedPrefix + PhaseReleasing, FailedPrefix + PhaseErasing,
}

// Steps inside a phase. The status records the step and the power task it
// waits for, so that a new leader resumes exactly there.
const (
	StepPower = "power"      // ask the rack to network-boot the machine
	StepAgent = "agent"      // wait for the machine agent's result
	StepDisk  = "boot-disk"  // ask the rack to boot the deployed disk
	StepOff   = "power-off"  // ask the rack to power off, and wait
	StepImage = "wait-image" // wait until the rack can serve the OS image
	StepOS    = "os-report"  // wait for the deployed OS to report in
	// StepFastTrack: ready, the commissioning agent still running and
	// waiting to be given the deploy task without a reboot.
	StepFastTrack = "fast-track"
)

// Condition types on a machine's status.
const (
	CondPowerReachable    = "PowerReachable"
	CondCommissioned      = "Commissioned"
	CondDeployed          = "Deployed"
	CondImageDrift        = "ImageDrift"
	CondCommissionPending = "CommissionPending"
	CondPowerManual       = "PowerManual"
	CondImageNotReady     = "ImageNotReady"
	CondAdopted           = "Adopted"
	CondPowerDrift        = "PowerDrift"
	CondCablingMismatch   = "CablingMismatch"
	CondRolloutWaiting    = "RolloutWaiting"
)

// Policy is the lifecycle's timing and retry policy.
type Policy struct {
	// Timeouts bound each working phase, from its start; zero entries
	// take DefaultTimeouts.
	Timeouts map[string]time.Duration
	// PowerTimeout bounds how long a power task may wait for a rack
	// leader to carry it out (default 5m).
	PowerTimeout time.Duration
	// MaxAttempts is how many times a failed phase is tried in all
	// (default 3); after that the machine stays failed until a person acts.
	MaxAttempts int
	// RetryBackoff is the wait before the first retry; it doubles per
	// attempt up to MaxRetryBackoff (defaults 1m and 30m).
	RetryBackoff, MaxRetryBackoff time.Duration
	// OSReportTimeout bounds how long a deploy waits, after the disk boot,
	// for the deployed OS to report in (default 15m).
	OSReportTimeout time.Duration
	// NoFastTrack powers a machine off after commissioning even when it
	// is to be deployed (fasttrack.go; kiln server --fast-track=false).
	NoFastTrack bool
	// FastTrackWindow keeps a machine that is not to be deployed powered
	// on after commissioning, its agent waiting for a deploy, this long
	// (0: powered off at once; at most agentapi.MaxFastTrackWindow).
	FastTrackWindow time.Duration
	// PowerDriftGrace is how long after Kiln's own power action an
	// observed power state against the phase is not yet drift (default
	// DefaultPowerDriftGrace; see drift.go).
	PowerDriftGrace time.Duration
}

// DefaultOSReportTimeout is the OS report-in timeout when none is set.
const DefaultOSReportTimeout = 15 * time.Minute

// DefaultTimeouts are the phase timeouts when none is configured.
var DefaultTimeouts = map[string]time.Duration{
	PhaseCommissioning: 30 * time.Minute,
	PhaseDeploying:     60 * time.Minute,
	PhaseReleasing:     10 * time.Minute,
	PhaseErasing:       12 * time.Hour, // a full erase of large disks takes hours
}

func (p Policy) timeout(phase string) time.Duration {
	if d := p.Timeouts[phase]; d > 0 {
		return d
	}
	return DefaultTimeouts[phase]
}

func (p Policy) withDefaults() Policy {
	if p.PowerTimeout == 0 {
		p.PowerTimeout = 5 * time.Minute
	}
	if p.MaxAttempts == 0 {
		p.MaxAttempts = 3
	}
	if p.RetryBackoff == 0 {
		p.RetryBackoff = time.Minute
	}
	if p.MaxRetryBackoff == 0 {
		p.MaxRetryBackoff = 30 * time.Minute
	}
	if p.OSReportTimeout == 0 {
		p.OSReportTimeout = DefaultOSReportTimeout
	}
	if p.PowerDriftGrace == 0 {
		p.PowerDriftGrace = DefaultPowerDriftGrace
	}
	return p
}

// retryAfter is the wait before attempt n+1 after n failures.
func (p Policy) retryAfter(n int) time.Duration {
	d := p.RetryBackoff << min(max(n-1, 0), 16)
	return min(d, p.MaxRetryBackoff)
}

// Input is everything the state machine decides on.
type Input struct {
	Now     time.Time
	Machine *spec.Machine // nil: no longer in the inventory (unmanaged)
	Status  inventory.MachineStatus
	Task    *inventory.PowerTask // the machine's current power task, if any
	// Revision is the source revision (git commit) of the desired state.
	Revision string
	// Observed is the etcd revision the desired state was read at.
	Observed int64
	// Image is the machine's OS image (nil: not in the inventory), and
	// ImageOnRack the machine's rack's report of it (nil: none yet).
	Image       *spec.Image
	ImageOnRack *inventory.ImageStatus
	// Rack is the machine's rack and Profile the profile whose defaults
	// it took (nil: none, or not in the inventory).
	Rack    *spec.Rack
	Profile *spec.Profile
	// Rollout says whether a deployed machine of a profile with rollout
	// may start its redeploy now (nil: no rollout, or no slot given).
	Rollout *RolloutGate
	// Report is what the machine's rack last stored from its agents and
	// deployed OS (nil: nothing). Only a report of the phase's network
	// boot (Status.BootTaskID) is acted on.
	Report *inventory.MachineReport
	// Power is the rack's newest observation of the machine's power
	// state (nil: none); see drift.go.
	Power *inventory.PowerObservation
}

// Decision is what the state machine wants written, all at once.
type Decision struct {
	Status       inventory.MachineStatus
	Task         *inventory.PowerTask // a new task to write, replacing any
	DeleteTask   bool                 // cancel the pending task
	Events       []inventory.Event
	RequeueAfter time.Duration // look again after this long (0: on change only)
}

// Decide runs the lifecycle state machine for one machine: a pure
// function of its spec, status and power task. Every step it takes is
// recorded in the returned status, written together with the task and the
// events in one transaction, so a leader that dies between two decisions
// leaves nothing half done.
func Decide(in Input, p Policy) Decision {
	d := &decider{in: in, p: p.withDefaults()}
	d.out.Status = in.Status
	d.out.Status.Conditions = append([]inventory.Condition(nil), in.Status.Conditions...)
	if in.Machine == nil {
		return d.out // unmanaged: nothing is powered off or wiped
	}
	d.run()
	return d.out
}

type decider struct {
	in  Input
	p   Policy
	out Decision
	// task is the current task as this decision leaves it.
	task *inventory.PowerTask
}

func (d *decider) st() *inventory.MachineStatus { return &d.out.Status }
func (d *decider) spec() *spec.MachineSpec      { return &d.in.Machine.Spec }
func (d *decider) name() string                 { return d.in.Machine.Metadata.Name }

func (d *decider) run() {
	st := d.st()
	d.task = d.in.Task
	st.Rack = d.spec().Rack
	st.SourceRevision = d.in.Revision
	st.Addresses = addresses(d.spec())
	if d.in.Observed > st.ObservedGeneration {
		st.ObservedGeneration = d.in.Observed
	}
	d.observeTask()
	d.observePower()
	defer d.powerDrift() // on the phase this decision leaves
	d.powerRequest()
	if d.spec().InMaintenance() {
		if st.Phase != PhaseMaintenance {
			paused := st.Phase
			if d.task != nil && !d.task.Finished() {
				d.out.DeleteTask = true
			}
			d.transition(PhaseMaintenance, "Maintenance", "spec.maintenance is true: every action is paused")
			st.Paused = paused
		}
		return
	}
	if st.Phase == PhaseMaintenance {
		resume := st.Paused
		st.Paused = ""
		d.event("Normal", "Resumed", "maintenance ended; resuming "+orNew(resume))
		d.resume(resume)
	}
	// Each pass either changes the step (and loops) or settles.
	for range 8 {
		if !d.step() {
			return
		}
	}
}

// addresses are the machine's static addresses from its spec (allocated
// ones are in the rack's leases: kiln get leases).
func addresses(sp *spec.MachineSpec) []string {
	var out []string
	add := func(ip string) {
		if ip != "" && ip != "auto" {
			out = append(out, ip)
		}
	}
	for _, i := range sp.Interfaces {
		add(i.IP)
	}
	for _, b := range sp.Bonds {
		add(b.IP)
	}
	for _, v := range sp.VLANs {
		add(v.IP)
	}
	return out
}

// resume re-enters a paused phase: steady phases as they were, working
// phases from their first step.
func (d *decider) resume(phase string) {
	switch {
	case phase == PhaseReady || phase == PhaseDeployed:
		d.st().Phase, d.st().Step, d.st().TaskID = phase, "", ""
	case phase == PhaseNew:
		d.st().Phase = PhaseNew
	case strings.HasPrefix(phase, FailedPrefix):
		// Ending maintenance is how a person says "fixed, try again".
		d.st().Attempts = 0
		d.enter(strings.TrimPrefix(phase, FailedPrefix), "Retry", "maintenance ended: trying again")
	default:
		d.enter(phase, "Resumed", "restarting "+phase+" from its first step")
	}
}

func orNew(p string) string {
	if p == "" {
		return "the lifecycle"
	}
	return p
}

// observeTask records what the rack reported about the current task.
func (d *decider) observeTask() {
	t, st := d.task, d.st()
	if t == nil || !t.Finished() || t.ID != st.TaskID {
		return
	}
	if t.Power != "" && (st.PowerAt.IsZero() || t.DoneAt.After(st.PowerAt)) {
		st.Power, st.PowerAt = t.Power, t.DoneAt
	}
	switch t.State {
	case inventory.TaskDone:
		st.SetCondition(CondPowerReachable, "True", "TaskDone", t.Action+" done", d.in.Now)
		st.SetCondition(CondPowerManual, "False", "", "", d.in.Now)
	case inventory.TaskFailed:
		st.SetCondition(CondPowerReachable, "False", "TaskFailed", t.Error, d.in.Now)
	case inventory.TaskManual:
		st.SetCondition(CondPowerManual, "True", "NoBMC", t.Error, d.in.Now)
	}
}

// step advances the machine by one step; it reports whether it changed
// the phase or step (and so should look again).
func (d *decider) step() bool {
	st, sp := d.st(), d.spec()
	switch st.Phase {
	case PhaseNew:
		if d.adopt() {
			return true // deployed: settles there, untouched
		}
		d.enter(PhaseCommissioning, "Commissioning", "new machine: commissioning its hardware")
		return true
	case PhaseReady:
		if in, changed := d.fastTrackWindow(); in {
			return changed
		}
		d.checkCabling()
		held := d.cablingHeld()
		switch {
		case d.commissionAdopted():
			return true
		case sp.CommissionGeneration > st.CommissionedGeneration:
			d.enter(PhaseCommissioning, "Commissioning", fmt.Sprintf("commissionGeneration raised to %d", sp.CommissionGeneration))
			return true
		case sp.State == spec.StateDeployed && !held:
			d.enter(PhaseDeploying, "Deploying", "deploying image "+sp.Image)
			return true
		}
		st.BootPurpose = agentapi.PurposeOff
		return false
	case PhaseDeployed:
		handled, changed := d.rollout()
		switch {
		case sp.State == spec.StateReady:
			d.enter(PhaseReleasing, "Releasing", "spec.state is ready: releasing the machine")
			return true
		case changed:
			return true
		case !handled && sp.DeployGeneration > st.DeployedGeneration:
			d.enter(PhaseDeploying, "Redeploying", fmt.Sprintf("deployGeneration raised to %d: rewriting the disk with %s", sp.DeployGeneration, sp.Image))
			return true
		}
		st.BootPurpose = agentapi.PurposeLocal
		d.checkCabling()
		if sp.Image != st.DeployedImage {
			st.SetCondition(CondImageDrift, "True", "ImageChanged",
				fmt.Sprintf("deployed %s, spec asks for %s; %s", st.DeployedImage, sp.Image, d.redeployHint()), d.in.Now)
		} else {
			st.SetCondition(CondImageDrift, "False", "", "", d.in.Now)
		}
		if sp.CommissionGeneration > st.CommissionedGeneration {
			st.SetCondition(CondCommissionPending, "True", "Deployed", "commissionGeneration was raised; release the machine (state: ready) to commission it again", d.in.Now)
		} else {
			st.SetCondition(CondCommissionPending, "False", "", "", d.in.Now)
		}
		return false
	case PhaseCommissioning, PhaseDeploying, PhaseErasing:
		if st.Phase == PhaseDeploying && sp.State == spec.StateReady {
			d.enter(PhaseReleasing, "DeployAborted", "spec.state is ready again: aborting the deployment and releasing")
			return true
		}
		return d.working()
	case PhaseReleasing:
		return d.releasing()
	}
	if phase, ok := strings.CutPrefix(st.Phase, FailedPrefix); ok {
		return d.failed(phase)
	}
	// An unknown phase (a newer Kiln wrote it?): start over safely.
	d.transition(PhaseNew, "UnknownPhase", fmt.Sprintf("unknown phase %q; starting over", st.Phase))
	return true
}

// purposeOf is the boot purpose of a working phase.
func purposeOf(phase string) string {
	switch phase {
	case PhaseCommissioning:
		return agentapi.PurposeCommission
	case PhaseDeploying:
		return agentapi.PurposeDeploy
	case PhaseErasing:
		return agentapi.PurposeErase
	}
	return agentapi.PurposeOff
}

// working drives commissioning, deploying and erasing: network-boot the
// machine into the ephemeral image, wait for the agent, finish.
func (d *decider) working() bool {
	st := d.st()
	if st.Phase == PhaseDeploying && (st.Step == StepPower || st.Step == StepImage) && !d.imageGate() {
		return false
	}
	if d.timedOut() {
		return true
	}
	switch st.Step {
	case StepPower:
		st.BootPurpose = purposeOf(st.Phase)
		d.newTask(inventory.TaskNetboot, StepAgent)
		return true
	case StepAgent:
		d.ignoreOtherBoot()
		if r := d.report(); r != nil && r.Result != nil && d.resultReady() {
			if !r.Result.Success {
				d.fail("the machine agent reported: " + r.Result.Reason)
				return true
			}
			return d.agentSucceeded()
		}
		if d.fastTracked() {
			return false // the agent is up already: no power task to wait for
		}
		return d.waitTask(false)
	case StepDisk:
		return d.waitTask(true)
	case StepOS:
		return d.waitOS()
	}
	d.setStep(StepPower) // unknown step: begin the phase again
	return true
}

// imageGate holds a deployment until the machine's rack has the OS image
// verified in its cache; it reports whether the deployment may go on.
// The wait does not count against the deploy timeout: the phase's clock
// starts when the image is ready.
func (d *decider) imageGate() bool {
	st, now := d.st(), d.in.Now
	why := d.imageNotReady()
	if why != "" {
		if st.Step != StepImage {
			d.setStep(StepImage)
			d.event("Warning", "ImageNotReady", why)
		}
		st.SetCondition(CondImageNotReady, "True", "RackCache", why, now)
		return false
	}
	if st.Step == StepImage {
		st.SetCondition(CondImageNotReady, "False", "ImageReady", "", now)
		st.PhaseStartedAt = now
		d.setStep(StepPower)
		d.event("Normal", "ImageReady", "rack "+st.Rack+" has image "+d.spec().Image+" ready: deploying")
	}
	return true
}

// imageNotReady says why the machine's rack cannot serve its OS image
// yet, or "" when it can.
func (d *decider) imageNotReady() string {
	name, rack, img, rs := d.spec().Image, d.st().Rack, d.in.Image, d.in.ImageOnRack
	switch {
	case img == nil || img.Spec.Disk == nil:
		return fmt.Sprintf("image %s is not an OS image in the inventory", name)
	case rs == nil:
		return fmt.Sprintf("rack %s has not reported image %s yet (is a rack agent with an image cache running?)", rack, name)
	case !slices.Contains(rs.SHA256s, img.Spec.Disk.SHA256):
		return fmt.Sprintf("rack %s has not checked the current files of image %s yet", rack, name)
	case rs.State != "ready":
		msg := fmt.Sprintf("rack %s cannot serve image %s (%s)", rack, name, rs.State)
		if rs.Message != "" {
			msg += ": " + rs.Message
		}
		return msg
	}
	return ""
}

// confirmsByOS reports whether the deployment waits for the OS to report.
func (d *decider) confirmsByOS() bool {
	return d.in.Image == nil || d.in.Image.Spec.ConfirmsByOS()
}

// waitOS waits for the deployed OS to report in after the disk boot; a
// report from before that boot is not this deployment's.
func (d *decider) waitOS() bool {
	st, now := d.st(), d.in.Now
	d.ignoreOtherBoot()
	if rep := d.report(); rep != nil && rep.OSReport != nil {
		r := rep.OSReport
		st.OSReport = r
		who := r.Hostname
		if who == "" {
			who = r.InstanceID
		}
		msg := "the OS reported in as " + who
		if r.BootID != "" {
			msg += " (boot " + r.BootID + ")"
		}
		if r.Address != "" {
			msg += " from " + r.Address
		}
		d.deployed("OSReported", msg)
		return true
	}
	waited := now.Sub(st.StepStartedAt)
	if waited >= d.p.OSReportTimeout {
		d.fail(fmt.Sprintf("the deployed OS did not report in within %s of the disk boot: did it boot from its disk, and does the image run cloud-init (phone_home)? See the console; an image that cannot report needs confirm: none", d.p.OSReportTimeout))
		return true
	}
	d.requeue(d.p.OSReportTimeout - waited)
	return false
}

// deployed ends a deployment.
func (d *decider) deployed(reason, how string) {
	st, sp, now := d.st(), d.spec(), d.in.Now
	st.DeployedGeneration, st.DeployedImage, st.DeployedAt = sp.DeployGeneration, sp.Image, now
	st.SetCondition(CondDeployed, "True", reason, how, now)
	st.SetCondition(CondImageDrift, "False", "", "", now)
	d.finish(PhaseDeployed, "Deployed", "image "+sp.Image+" deployed: "+how)
}

// report is the rack's report of the phase's network boot, or nil: a
// report of any other boot (an earlier one, a replayed token) is not
// this phase's and is never acted on.
func (d *decider) report() *inventory.MachineReport {
	r, st := d.in.Report, d.st()
	if r == nil || r.TaskID == "" || r.TaskID != st.BootTaskID {
		return nil
	}
	return r
}

// ignoreOtherBoot says once (an event) that a report of another boot
// than the one waited for was ignored.
func (d *decider) ignoreOtherBoot() {
	r, st := d.in.Report, d.st()
	if r == nil || (r.Result == nil && r.OSReport == nil) || (r.TaskID != "" && (r.TaskID == st.BootTaskID || r.TaskID == st.FastTrackFrom)) {
		return
	}
	task := r.TaskID
	if task == "" {
		task = "none" // a report without a boot: never this phase's
	}
	if task == st.IgnoredReport {
		return
	}
	st.IgnoredReport = task
	d.event("Warning", "StaleReport", "ignored a report of another boot (task "+task+"), not of "+st.BootTaskID)
}

// resultReady reports whether the result can be acted on: the step's
// network boot is known to have been done (or is a person's to do).
func (d *decider) resultReady() bool {
	t := d.task
	return d.fastTracked() || t != nil && t.ID == d.st().TaskID && (t.State == inventory.TaskDone || t.State == inventory.TaskManual)
}

// agentSucceeded ends the agent step of a working phase.
func (d *decider) agentSucceeded() bool {
	st, sp, now := d.st(), d.spec(), d.in.Now
	switch st.Phase {
	case PhaseCommissioning:
		r := d.report()
		if r == nil || len(r.Facts) == 0 {
			d.fail("the machine agent reported success but no hardware facts")
			return true
		}
		st.Facts = r.Facts // the region's copy: profiles and the CLI read it
		st.CommissionedGeneration, st.CommissionedAt = sp.CommissionGeneration, now
		st.SetCondition(CondCommissioned, "True", "AgentReported", "hardware facts reported", now)
		if d.fastTrack() {
			return true
		}
		if !d.openWindow() {
			d.finish(PhaseReady, "Commissioned", "hardware commissioned")
		}
		d.checkCabling() // the facts' LLDP neighbours against the rack's ports
	case PhaseErasing:
		d.finish(PhaseReady, "Erased", "disks erased ("+sp.Erase+")")
	case PhaseDeploying:
		st.BootPurpose = agentapi.PurposeLocal
		d.newTask(inventory.TaskDiskboot, StepDisk)
	}
	return true
}

// waitTask waits for the step's power task; done ends the step when
// onDone is set (the disk boot of a deployment).
func (d *decider) waitTask(onDone bool) bool {
	st, t := d.st(), d.task
	if t == nil || t.ID != st.TaskID {
		// The task is gone (deleted by hand, or replaced): ask again.
		d.event("Warning", "TaskLost", "power task "+st.TaskID+" disappeared; asking the rack again")
		d.newTask(d.actionOfStep(), st.Step)
		return true
	}
	switch t.State {
	case inventory.TaskFailed:
		d.fail(fmt.Sprintf("power %s failed on rack %s: %s", t.Action, st.Rack, t.Error))
		return true
	case inventory.TaskDone:
		if onDone {
			if d.confirmsByOS() {
				d.setStep(StepOS) // the disk boots; the OS reports in next
				st.Message = "image " + d.spec().Image + " written; waiting for the OS to report in"
				return true
			}
			d.deployed("DiskBooted", "disk boot requested, not confirmed (the image has confirm: none)")
			return true
		}
		return false // the machine is booting; the agent reports next
	case inventory.TaskManual:
		return false // a person powers it; the phase timeout still runs
	}
	// Pending: the rack leader has not done it yet.
	if wait := d.in.Now.Sub(st.StepStartedAt); wait >= d.p.PowerTimeout {
		d.fail(fmt.Sprintf("no rack agent of rack %s carried out power task %s within %s (is a rack agent for %s running?)", st.Rack, t.Action, d.p.PowerTimeout, st.Rack))
		return true
	} else {
		d.requeue(d.p.PowerTimeout - wait)
	}
	return false
}

func (d *decider) actionOfStep() string {
	switch d.st().Step {
	case StepDisk:
		return inventory.TaskDiskboot
	case StepOff:
		return inventory.TaskOff
	}
	return inventory.TaskNetboot
}

// releasing powers the machine off, then erases it if the spec asks.
func (d *decider) releasing() bool {
	st := d.st()
	if d.timedOut() {
		return true
	}
	switch st.Step {
	case StepOff:
		if st.TaskID == "" {
			st.BootPurpose = agentapi.PurposeOff
			d.newTask(inventory.TaskOff, StepOff)
			return true
		}
		t := d.task
		if t != nil && t.ID == st.TaskID && t.State == inventory.TaskDone {
			st.SetCondition(CondDeployed, "False", "Released", "", d.in.Now)
			st.DeployedImage, st.DeployedGeneration = "", 0
			if e := d.spec().Erase; e != "" && e != "none" {
				d.enter(PhaseErasing, "Erasing", "erasing disks ("+e+") before the machine is ready again")
				return true
			}
			d.finish(PhaseReady, "Released", "powered off and released")
			return true
		}
		return d.waitTask(false)
	}
	d.setStep(StepOff)
	return true
}

// failed retries a failed phase with backoff, up to the attempt limit;
// spec changes can also end it.
func (d *decider) failed(phase string) bool {
	st, sp, now := d.st(), d.spec(), d.in.Now
	switch {
	case phase == PhaseDeploying && sp.State == spec.StateReady:
		st.Attempts = 0
		d.enter(PhaseReleasing, "Releasing", "spec.state is ready: releasing the machine that failed to deploy")
		return true
	case st.Retry:
		st.Attempts, st.Retry = 0, false
		d.enter(phase, "Retry", "retry requested (kiln retry): trying "+phase+" again")
		return true
	case st.Attempts >= d.p.MaxAttempts && generationOf(phase, sp) > st.FailedGeneration:
		st.Attempts = 0
		d.enter(phase, "Retry", "the spec's generation was raised: trying "+phase+" again")
		return true
	}
	if st.Attempts >= d.p.MaxAttempts {
		return false // a person acts: see docs/lifecycle.md
	}
	due := st.PhaseStartedAt.Add(d.p.retryAfter(st.Attempts))
	if now.Before(due) {
		d.requeue(due.Sub(now))
		return false
	}
	d.enter(phase, "Retry", fmt.Sprintf("attempt %d of %d", st.Attempts+1, d.p.MaxAttempts))
	return true
}

// generationOf is the spec generation that asks for a phase again.
func generationOf(phase string, sp *spec.MachineSpec) int64 {
	switch phase {
	case PhaseCommissioning:
		return sp.CommissionGeneration
	case PhaseDeploying:
		return sp.DeployGeneration
	}
	return 0
}

// timedOut fails the phase when it ran past its timeout.
func (d *decider) timedOut() bool {
	st := d.st()
	limit := d.p.timeout(st.Phase)
	if limit <= 0 || st.PhaseStartedAt.IsZero() {
		return false
	}
	spent := d.in.Now.Sub(st.PhaseStartedAt)
	if spent < limit {
		d.requeue(limit - spent)
		return false
	}
	msg := fmt.Sprintf("%s timed out after %s in step %s", st.Phase, limit, st.Step)
	if r := d.report(); r != nil && r.Progress != nil {
		pr := r.Progress
		msg += fmt.Sprintf("; the agent last reported %s", pr.Phase)
		if pr.TotalBytes > 0 {
			msg += fmt.Sprintf(" (%d of %d bytes)", pr.BytesWritten, pr.TotalBytes)
		}
		msg += " at " + pr.At.UTC().Format(time.RFC3339)
	} else if st.Step == StepAgent {
		msg += "; the machine agent never reported (did the machine network-boot? see kiln describe machine)"
	}
	d.fail(msg)
	return true
}

// enter starts a phase at its first step.
func (d *decider) enter(phase, reason, msg string) {
	st := d.st()
	d.transition(phase, reason, msg)
	// Reports of earlier boots are ignored from here: only the phase's
	// own network boot (newTask sets BootTaskID) counts.
	st.BootTaskID, st.IgnoredReport = "", ""
	switch phase {
	case PhaseCommissioning, PhaseDeploying, PhaseErasing:
		st.Step = StepPower
	case PhaseReleasing:
		st.Step = StepOff
	}
}

// finish ends a working phase successfully and powers the machine off
// when it enters ready.
func (d *decider) finish(phase, reason, msg string) {
	st := d.st()
	st.Attempts = 0
	d.transition(phase, reason, msg)
	if phase == PhaseReady {
		st.BootPurpose = agentapi.PurposeOff
		d.newTask(inventory.TaskOff, "")
	}
}

// fail moves the phase to failed-<phase>, powers the machine off, and
// counts the attempt.
func (d *decider) fail(reason string) {
	st := d.st()
	phase := st.Phase
	st.Attempts++
	st.FailedGeneration = generationOf(phase, d.spec())
	d.transition(FailedPrefix+phase, "Failed", reason)
	d.out.Events[len(d.out.Events)-1].Type = "Warning"
	st.Reason = reason
	st.BootPurpose = agentapi.PurposeOff
	d.newTask(inventory.TaskOff, "")
	if st.Attempts < d.p.MaxAttempts {
		d.requeue(d.p.retryAfter(st.Attempts))
	}
}

// transition changes the phase and records the event.
func (d *decider) transition(phase, reason, msg string) {
	st := d.st()
	from := st.Phase
	st.Phase, st.PhaseStartedAt, st.StepStartedAt = phase, d.in.Now, d.in.Now
	st.Step, st.TaskID, st.Reason = "", "", ""
	st.FastTrackFrom = "" // a handover lasts one phase
	st.PowerWanted = ""   // so does a power action's wanted state
	st.Message = msg
	d.out.Events = append(d.out.Events, inventory.Event{Time: d.in.Now, Machine: d.name(), Type: "Normal",
		Reason: reason, Message: msg, From: from, To: phase})
}

func (d *decider) setStep(step string) {
	d.st().Step, d.st().StepStartedAt = step, d.in.Now
}

// newTask asks the rack for a power action and moves to the next step.
func (d *decider) newTask(action, next string) {
	st := d.st()
	t := &inventory.PowerTask{
		ID:      d.name() + "." + strconv.FormatInt(d.in.Now.UnixNano(), 36) + "." + action,
		Machine: d.name(), Action: action, CreatedAt: d.in.Now, State: inventory.TaskPending,
	}
	if action == inventory.TaskNetboot {
		t.Purpose = st.BootPurpose
	}
	d.out.Task, d.out.DeleteTask, d.task = t, false, t
	st.TaskID = t.ID
	if action == inventory.TaskNetboot {
		st.BootTaskID = t.ID
	}
	if next != "" {
		d.setStep(next)
	}
}

func (d *decider) event(typ, reason, msg string) {
	d.out.Events = append(d.out.Events, inventory.Event{Time: d.in.Now, Machine: d.name(), Type: typ,
		Reason: reason, Message: msg, From: d.st().Phase, To: d.st().Phase})
}

func (d *decider) requeue(after time.Duration) {
	if after <= 0 {
		after = time.Millisecond
	}
	if d.out.RequeueAfter == 0 || after < d.out.RequeueAfter {
		d.out.RequeueAfter = after
	}
}
