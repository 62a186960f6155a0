package reconciler

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/spec"
)

var t0 = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

// testMachine is a machine in rack r1 that wants state.
func testMachine(state string, mod ...func(*spec.MachineSpec)) *spec.Machine {
	m := &spec.Machine{Spec: spec.MachineSpec{Rack: "r1", State: state, Image: "debian", Erase: "none"}}
	m.Kind, m.Metadata.Name = spec.KindMachine, "m1"
	for _, f := range mod {
		f(&m.Spec)
	}
	return m
}

// at is a status in phase and step, waiting for task id "T" since t0.
func at(phase, step string) inventory.MachineStatus {
	st := inventory.MachineStatus{Phase: phase, Step: step, Rack: "r1", PhaseStartedAt: t0, StepStartedAt: t0}
	if step != "" && step != StepPower {
		st.TaskID = "T"
		st.BootTaskID = "T" // the phase's network boot (a deploy's later steps keep it)
	}
	switch phase {
	case PhaseDeployed:
		st.DeployedImage = "debian"
	}
	return st
}

func task(action, state string) *inventory.PowerTask {
	return &inventory.PowerTask{ID: "T", Machine: "m1", Action: action, State: state, CreatedAt: t0}
}

// result is the rack's report of boot task "T": facts and a result.
func result(ok bool, reason string) *inventory.MachineReport {
	return &inventory.MachineReport{TaskID: "T", Facts: json.RawMessage(`{"cpus":2}`),
		Result: &inventory.AgentResult{Success: ok, Reason: reason, At: t0.Add(time.Minute)}}
}

// ofTask is a report moved to another boot's task.
func ofTask(r *inventory.MachineReport, id string) *inventory.MachineReport {
	r.TaskID = id
	return r
}

const debianSHA = "9a8b7c6d5e4f30211203f4e5d6c7b8a99a8b7c6d5e4f30211203f4e5d6c7b8a9"

// osImage is the OS image "debian" with a deploy confirmation.
func osImage(confirm string) *spec.Image {
	im := &spec.Image{Spec: spec.ImageSpec{Purpose: spec.PurposeOS, Confirm: confirm,
		Disk: &spec.Artifact{URL: "http://images.invalid/debian.raw", SHA256: debianSHA}}}
	im.Kind, im.Metadata.Name = spec.KindImage, "debian"
	return im
}

// onRack is rack r1's report of image "debian".
func onRack(state, msg string, shas ...string) *inventory.ImageStatus {
	if len(shas) == 0 {
		shas = []string{debianSHA}
	}
	return &inventory.ImageStatus{Rack: "r1", State: state, Message: msg, SHA256s: shas}
}

func osReport(at time.Time) *inventory.MachineReport {
	return &inventory.MachineReport{TaskID: "T", OSReport: &inventory.OSReport{Hostname: "m1", BootID: "0123abcd", Address: "192.0.2.10", At: at}}
}

func doneAt(t *inventory.PowerTask, at time.Time) *inventory.PowerTask {
	t.DoneAt = at
	return t
}

func TestDecideTable(t *testing.T) {
	p := Policy{MaxAttempts: 3, RetryBackoff: time.Minute, PowerTimeout: 5 * time.Minute}
	maint := func(s *spec.MachineSpec) { b := true; s.Maintenance = &b }
	eraseQuick := func(s *spec.MachineSpec) { s.Erase = "quick" }
	recommission := func(s *spec.MachineSpec) { s.CommissionGeneration = 1 }
	redeploy := func(s *spec.MachineSpec) { s.DeployGeneration = 1 }
	otherImage := func(s *spec.MachineSpec) { s.Image = "ubuntu" }
	adopt := func(s *spec.MachineSpec) { s.Adopt = true }
	failed := func(phase string, attempts int) inventory.MachineStatus {
		st := at(FailedPrefix+phase, "")
		st.Attempts, st.Reason = attempts, "boom"
		return st
	}
	cases := []struct {
		name    string
		m       *spec.Machine
		st      inventory.MachineStatus
		task    *inventory.PowerTask
		after   time.Duration // now = t0 + after
		phase   string
		step    string
		action  string // task written; "" none
		purpose string // boot purpose after; "" unchecked
		event   string // a reason among the events; "" none expected
		requeue bool
		image   *spec.Image            // nil: osImage("")
		onRack  *inventory.ImageStatus // nil: ready, unless noRack
		noRack  bool                   // the rack has not reported the image
		report  *inventory.MachineReport
		rack    *spec.Rack // the machine's rack; nil none
	}{
		// New machines.
		{name: "new/commissions", m: testMachine("ready"), st: inventory.MachineStatus{}, phase: PhaseCommissioning, step: StepAgent, action: "netboot", purpose: "commission", event: "Commissioning", requeue: true},
		{name: "new/deployed-wanted-commissions-first", m: testMachine("deployed"), st: inventory.MachineStatus{}, phase: PhaseCommissioning, step: StepAgent, action: "netboot", purpose: "commission"},
		{name: "new/maintenance", m: testMachine("ready", maint), st: inventory.MachineStatus{}, phase: PhaseMaintenance, event: "Maintenance"},
		{name: "new/adopt-deployed-untouched", m: testMachine("deployed", adopt), st: inventory.MachineStatus{}, phase: PhaseDeployed, purpose: "local", event: "Adopted"},
		{name: "new/adopt-ready-commissions", m: testMachine("ready", adopt), st: inventory.MachineStatus{}, phase: PhaseCommissioning, action: "netboot", purpose: "commission"},
		{name: "new/adopt-maintenance-waits", m: testMachine("deployed", adopt, maint), st: inventory.MachineStatus{}, phase: PhaseMaintenance, event: "Maintenance"},
		{name: "new/adopt-after-maintenance", m: testMachine("deployed", adopt), st: func() inventory.MachineStatus { s := at(PhaseMaintenance, ""); s.Paused = PhaseNew; return s }(), phase: PhaseDeployed, purpose: "local", event: "Adopted"},
		{name: "adopt/ignored-with-a-status", m: testMachine("deployed", adopt), st: at(PhaseReady, ""), phase: PhaseDeploying, action: "netboot", purpose: "deploy", event: "Deploying"},
		{name: "adopt/ignored-on-unknown-phase", m: testMachine("deployed", adopt), st: at("exploding", ""), phase: PhaseCommissioning, action: "netboot", purpose: "commission"},
		{name: "adopt/deployed-release", m: testMachine("ready", adopt), st: adopted(), phase: PhaseReleasing, step: StepOff, action: "off", purpose: "off", event: "Releasing"},
		{name: "adopt/released-commissions", m: testMachine("ready", adopt), st: func() inventory.MachineStatus {
			s := adopted()
			s.Phase, s.Step = PhaseReleasing, StepOff
			s.TaskID = "T"
			return s
		}(), task: task("off", "done"), phase: PhaseCommissioning, step: StepAgent, action: "netboot", purpose: "commission", event: "Commissioning"},
		{name: "adopt/commissioned-no-more", m: testMachine("ready", adopt), st: func() inventory.MachineStatus {
			s := adopted()
			s.Phase, s.DeployedImage, s.CommissionedAt = PhaseReady, "", t0
			return s
		}(), phase: PhaseReady, purpose: "off"},

		// Commissioning.
		{name: "commissioning/power-step", m: testMachine("ready"), st: at(PhaseCommissioning, StepPower), phase: PhaseCommissioning, step: StepAgent, action: "netboot", purpose: "commission"},
		{name: "commissioning/task-pending-waits", m: testMachine("ready"), st: at(PhaseCommissioning, StepAgent), task: task("netboot", "pending"), after: time.Minute, phase: PhaseCommissioning, step: StepAgent, requeue: true},
		{name: "commissioning/task-done-waits-agent", m: testMachine("ready"), st: at(PhaseCommissioning, StepAgent), task: task("netboot", "done"), after: time.Minute, phase: PhaseCommissioning, step: StepAgent, requeue: true},
		{name: "commissioning/agent-success", m: testMachine("ready"), st: at(PhaseCommissioning, StepAgent), report: result(true, ""), task: task("netboot", "done"), phase: PhaseReady, action: "off", purpose: "off", event: "Commissioned"},
		{name: "commissioning/result-before-the-boot-ignored", m: testMachine("ready"), st: at(PhaseCommissioning, StepAgent), report: ofTask(result(true, ""), "OLD"), task: task("netboot", "done"), phase: PhaseCommissioning, step: StepAgent, event: "StaleReport"},
		{name: "commissioning/result-without-task-ignored", m: testMachine("ready"), st: at(PhaseCommissioning, StepAgent), report: ofTask(result(true, ""), ""), task: task("netboot", "done"), phase: PhaseCommissioning, step: StepAgent, event: "StaleReport"},
		{name: "commissioning/result-before-task-outcome-waits", m: testMachine("ready"), st: at(PhaseCommissioning, StepAgent), report: result(true, ""), task: task("netboot", "pending"), phase: PhaseCommissioning, step: StepAgent, requeue: true},
		{name: "commissioning/agent-failure", m: testMachine("ready"), st: at(PhaseCommissioning, StepAgent), report: result(false, "no disks"), task: task("netboot", "done"), phase: "failed-commissioning", action: "off", purpose: "off", event: "Failed", requeue: true},
		{name: "commissioning/power-failed", m: testMachine("ready"), st: at(PhaseCommissioning, StepAgent), task: task("netboot", "failed"), phase: "failed-commissioning", action: "off", event: "Failed"},
		{name: "commissioning/power-manual-waits", m: testMachine("ready"), st: at(PhaseCommissioning, StepAgent), task: task("netboot", "manual"), after: 10 * time.Minute, phase: PhaseCommissioning, step: StepAgent},
		{name: "commissioning/power-pending-too-long", m: testMachine("ready"), st: at(PhaseCommissioning, StepAgent), task: task("netboot", "pending"), after: 6 * time.Minute, phase: "failed-commissioning", action: "off", event: "Failed"},
		{name: "commissioning/task-lost-reissued", m: testMachine("ready"), st: at(PhaseCommissioning, StepAgent), task: nil, phase: PhaseCommissioning, step: StepAgent, action: "netboot", event: "TaskLost"},
		{name: "commissioning/timeout", m: testMachine("ready"), st: at(PhaseCommissioning, StepAgent), task: task("netboot", "done"), after: 31 * time.Minute, phase: "failed-commissioning", action: "off", event: "Failed"},
		{name: "commissioning/maintenance-pauses", m: testMachine("ready", maint), st: at(PhaseCommissioning, StepAgent), task: task("netboot", "pending"), phase: PhaseMaintenance, event: "Maintenance"},
		{name: "commissioning/deployed-wanted-waits", m: testMachine("deployed"), st: at(PhaseCommissioning, StepAgent), task: task("netboot", "done"), after: time.Minute, phase: PhaseCommissioning, step: StepAgent},

		// Ready.
		{name: "ready/steady", m: testMachine("ready"), st: at(PhaseReady, ""), phase: PhaseReady, purpose: "off"},
		{name: "ready/deploy", m: testMachine("deployed"), st: at(PhaseReady, ""), phase: PhaseDeploying, step: StepAgent, action: "netboot", purpose: "deploy", event: "Deploying"},
		{name: "ready/recommission", m: testMachine("ready", recommission), st: at(PhaseReady, ""), phase: PhaseCommissioning, step: StepAgent, action: "netboot", purpose: "commission"},
		{name: "ready/unrelated-edit", m: testMachine("ready", otherImage, eraseQuick), st: at(PhaseReady, ""), phase: PhaseReady},
		{name: "ready/maintenance", m: testMachine("deployed", maint), st: at(PhaseReady, ""), phase: PhaseMaintenance},

		// Deploying.
		{name: "deploying/agent-success-boots-disk", m: testMachine("deployed"), st: at(PhaseDeploying, StepAgent), report: result(true, ""), task: task("netboot", "done"), phase: PhaseDeploying, step: StepDisk, action: "diskboot", purpose: "local"},
		{name: "deploying/agent-failure", m: testMachine("deployed"), st: at(PhaseDeploying, StepAgent), report: result(false, "sha256 mismatch"), task: task("netboot", "done"), phase: "failed-deploying", action: "off", event: "Failed"},
		{name: "deploying/disk-booted-waits-for-the-os", m: testMachine("deployed"), st: at(PhaseDeploying, StepDisk), task: task("diskboot", "done"), phase: PhaseDeploying, step: StepOS, requeue: true},
		{name: "deploying/disk-booted-confirm-none", m: testMachine("deployed"), st: at(PhaseDeploying, StepDisk), task: task("diskboot", "done"), image: osImage("none"), phase: PhaseDeployed, event: "Deployed"},
		{name: "deploying/os-reported", m: testMachine("deployed"), st: at(PhaseDeploying, StepOS), report: osReport(t0.Add(2 * time.Minute)), task: doneAt(task("diskboot", "done"), t0.Add(time.Minute)), after: 3 * time.Minute, phase: PhaseDeployed, purpose: "local", event: "Deployed"},
		{name: "deploying/os-report-of-another-boot-ignored", m: testMachine("deployed"), st: at(PhaseDeploying, StepOS), report: ofTask(osReport(t0), "OLD"), task: doneAt(task("diskboot", "done"), t0.Add(time.Minute)), after: 3 * time.Minute, phase: PhaseDeploying, step: StepOS, event: "StaleReport"},
		{name: "deploying/os-silent-waits", m: testMachine("deployed"), st: at(PhaseDeploying, StepOS), task: task("diskboot", "done"), after: 14 * time.Minute, phase: PhaseDeploying, step: StepOS, requeue: true},
		{name: "deploying/os-report-timeout", m: testMachine("deployed"), st: at(PhaseDeploying, StepOS), task: task("diskboot", "done"), after: 16 * time.Minute, phase: "failed-deploying", action: "off", event: "Failed"},
		{name: "deploying/image-failed-on-rack-waits", m: testMachine("deployed"), st: at(PhaseReady, ""), onRack: onRack("failed", "sha256 mismatch"), phase: PhaseDeploying, step: StepImage, event: "ImageNotReady"},
		{name: "deploying/image-not-reported-waits", m: testMachine("deployed"), st: at(PhaseReady, ""), noRack: true, phase: PhaseDeploying, step: StepImage, event: "ImageNotReady"},
		{name: "deploying/image-report-of-old-files-waits", m: testMachine("deployed"), st: at(PhaseReady, ""), onRack: onRack("ready", "", "00"), phase: PhaseDeploying, step: StepImage, event: "ImageNotReady"},
		{name: "deploying/image-wait-never-times-out", m: testMachine("deployed"), st: at(PhaseDeploying, StepImage), onRack: onRack("fetching", ""), after: 3 * time.Hour, phase: PhaseDeploying, step: StepImage},
		{name: "deploying/image-ready-boots", m: testMachine("deployed"), st: at(PhaseDeploying, StepImage), after: 3 * time.Hour, phase: PhaseDeploying, step: StepAgent, action: "netboot", purpose: "deploy", event: "ImageReady"},
		{name: "deploying/image-wait-aborted", m: testMachine("ready"), st: at(PhaseDeploying, StepImage), onRack: onRack("failed", "404"), phase: PhaseReleasing, action: "off", event: "DeployAborted"},
		{name: "deploying/disk-boot-failed", m: testMachine("deployed"), st: at(PhaseDeploying, StepDisk), task: task("diskboot", "failed"), phase: "failed-deploying", action: "off"},
		{name: "deploying/abort-to-ready", m: testMachine("ready"), st: at(PhaseDeploying, StepAgent), task: task("netboot", "done"), phase: PhaseReleasing, step: StepOff, action: "off", event: "DeployAborted"},
		{name: "deploying/timeout", m: testMachine("deployed"), st: at(PhaseDeploying, StepAgent), task: task("netboot", "done"), after: 61 * time.Minute, phase: "failed-deploying", action: "off"},

		// Deployed.
		{name: "deployed/steady", m: testMachine("deployed"), st: at(PhaseDeployed, ""), phase: PhaseDeployed, purpose: "local"},
		{name: "deployed/image-edit-no-redeploy", m: testMachine("deployed", otherImage), st: at(PhaseDeployed, ""), phase: PhaseDeployed, purpose: "local"},
		{name: "deployed/erase-edit-no-erase", m: testMachine("deployed", eraseQuick), st: at(PhaseDeployed, ""), phase: PhaseDeployed},
		{name: "deployed/recommission-waits", m: testMachine("deployed", recommission), st: at(PhaseDeployed, ""), phase: PhaseDeployed},
		{name: "deployed/redeploy", m: testMachine("deployed", redeploy), st: at(PhaseDeployed, ""), phase: PhaseDeploying, step: StepAgent, action: "netboot", purpose: "deploy", event: "Redeploying"},
		{name: "deployed/release", m: testMachine("ready"), st: at(PhaseDeployed, ""), phase: PhaseReleasing, step: StepOff, action: "off", purpose: "off", event: "Releasing"},

		// Releasing and erasing.
		{name: "releasing/off-done", m: testMachine("ready"), st: at(PhaseReleasing, StepOff), task: task("off", "done"), phase: PhaseReady, action: "off", event: "Released"},
		{name: "releasing/off-done-erase", m: testMachine("ready", eraseQuick), st: at(PhaseReleasing, StepOff), task: task("off", "done"), phase: PhaseErasing, step: StepAgent, action: "netboot", purpose: "erase", event: "Erasing"},
		{name: "releasing/off-failed", m: testMachine("ready"), st: at(PhaseReleasing, StepOff), task: task("off", "failed"), phase: "failed-releasing", action: "off"},
		{name: "releasing/timeout", m: testMachine("ready"), st: at(PhaseReleasing, StepOff), task: task("off", "pending"), after: 11 * time.Minute, phase: "failed-releasing", action: "off"},
		{name: "erasing/agent-success", m: testMachine("ready", eraseQuick), st: at(PhaseErasing, StepAgent), report: result(true, ""), task: task("netboot", "done"), phase: PhaseReady, action: "off", event: "Erased"},
		{name: "erasing/agent-failure", m: testMachine("ready", eraseQuick), st: at(PhaseErasing, StepAgent), report: result(false, "secure erase unsupported"), task: task("netboot", "done"), phase: "failed-erasing", action: "off"},

		// Failed phases: retry with backoff, then wait for a person.
		{name: "failed/backoff-not-due", m: testMachine("ready"), st: failed(PhaseCommissioning, 1), after: 30 * time.Second, phase: "failed-commissioning", requeue: true},
		{name: "failed/retry-due", m: testMachine("ready"), st: failed(PhaseCommissioning, 1), after: 61 * time.Second, phase: PhaseCommissioning, step: StepAgent, action: "netboot", event: "Retry"},
		{name: "failed/second-backoff-doubles", m: testMachine("ready"), st: failed(PhaseCommissioning, 2), after: 61 * time.Second, phase: "failed-commissioning", requeue: true},
		{name: "failed/exhausted-waits", m: testMachine("ready"), st: failed(PhaseCommissioning, 3), after: 24 * time.Hour, phase: "failed-commissioning"},
		{name: "failed/exhausted-generation-raised", m: testMachine("ready", recommission), st: failed(PhaseCommissioning, 3), phase: PhaseCommissioning, action: "netboot", event: "Retry"},
		{name: "failed/deploy-given-up", m: testMachine("ready"), st: failed(PhaseDeploying, 3), phase: PhaseReleasing, action: "off"},
		{name: "failed/kiln-retry", m: testMachine("ready"), st: func() inventory.MachineStatus { s := failed(PhaseErasing, 3); s.Retry = true; return s }(), phase: PhaseErasing, action: "netboot", event: "Retry"},
		{name: "failed/maintenance", m: testMachine("ready", maint), st: failed(PhaseDeploying, 3), phase: PhaseMaintenance},

		// Maintenance.
		{name: "maintenance/stays", m: testMachine("deployed", maint), st: func() inventory.MachineStatus { s := at(PhaseMaintenance, ""); s.Paused = PhaseReady; return s }(), phase: PhaseMaintenance},
		{name: "maintenance/ends-steady", m: testMachine("ready"), st: func() inventory.MachineStatus { s := at(PhaseMaintenance, ""); s.Paused = PhaseReady; return s }(), phase: PhaseReady, event: "Resumed"},
		{name: "maintenance/ends-working-restarts", m: testMachine("deployed"), st: func() inventory.MachineStatus { s := at(PhaseMaintenance, ""); s.Paused = PhaseDeploying; return s }(), phase: PhaseDeploying, step: StepAgent, action: "netboot", purpose: "deploy"},
		{name: "maintenance/ends-failed-retries", m: testMachine("ready"), st: func() inventory.MachineStatus {
			s := at(PhaseMaintenance, "")
			s.Paused = "failed-erasing"
			s.Attempts = 3
			return s
		}(), phase: PhaseErasing, action: "netboot"},

		// Cabling (more in cabling_test.go).
		{name: "commissioning/agent-success-cabling-mismatch", m: cabledMachine("ready"), st: at(PhaseCommissioning, StepAgent), report: miscabled(result(true, "")), task: task("netboot", "done"), rack: cablingRack("warn", tor("tor-a", torA, "Ethernet1/12:eth0")), phase: PhaseReady, action: "off", event: "CablingMismatch"},
		{name: "ready/cabling-block-holds", m: cabledMachine("deployed"), st: withFacts(at(PhaseReady, ""), miscabled(result(true, "")).Facts), rack: cablingRack("block", tor("tor-a", torA, "Ethernet1/12:eth0")), phase: PhaseReady, step: StepCablingHold, event: "DeployHeld"},
		{name: "ready/cabling-warn-deploys", m: cabledMachine("deployed"), st: withFacts(at(PhaseReady, ""), miscabled(result(true, "")).Facts), rack: cablingRack("warn", tor("tor-a", torA, "Ethernet1/12:eth0")), phase: PhaseDeploying, step: StepAgent, action: "netboot", event: "CablingMismatch"},
		{name: "ready/cabling-fixed-deploys", m: cabledMachine("deployed"), st: withFacts(at(PhaseReady, StepCablingHold), miscabled(result(true, "")).Facts), rack: cablingRack("block", tor("tor-b", torB, "Ethernet7:eth0")), phase: PhaseDeploying, step: StepAgent, action: "netboot", purpose: "deploy", event: "Deploying"},

		// Unknown phases start over safely (commissioning, never a wipe).
		{name: "unknown-phase", m: testMachine("deployed"), st: at("exploding", ""), phase: PhaseCommissioning, action: "netboot", purpose: "commission"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := Input{Now: t0.Add(c.after), Machine: c.m, Status: c.st, Task: c.task, Revision: "abc", Image: c.image, ImageOnRack: c.onRack, Report: c.report, Rack: c.rack}
			if in.Image == nil {
				in.Image = osImage("")
			}
			if in.ImageOnRack == nil && !c.noRack {
				in.ImageOnRack = onRack("ready", "")
			}
			d := Decide(in, p)
			if d.Status.Phase != c.phase {
				t.Fatalf("phase %q, want %q (reason %q, events %+v)", d.Status.Phase, c.phase, d.Status.Reason, d.Events)
			}
			if c.step != "" && d.Status.Step != c.step {
				t.Errorf("step %q, want %q", d.Status.Step, c.step)
			}
			switch {
			case c.action == "" && d.Task != nil:
				t.Errorf("unexpected task %s", d.Task.Action)
			case c.action != "" && d.Task == nil:
				t.Errorf("no task, want %s", c.action)
			case c.action != "" && d.Task.Action != c.action:
				t.Errorf("task %s, want %s", d.Task.Action, c.action)
			case d.Task != nil && d.Status.TaskID != d.Task.ID:
				t.Errorf("status waits for task %q, wrote %q", d.Status.TaskID, d.Task.ID)
			}
			if c.purpose != "" && d.Status.BootPurpose != c.purpose {
				t.Errorf("boot purpose %q, want %q", d.Status.BootPurpose, c.purpose)
			}
			if c.event != "" {
				var reasons []string
				for _, e := range d.Events {
					reasons = append(reasons, e.Reason)
				}
				if !strings.Contains(" "+strings.Join(reasons, " ")+" ", " "+c.event+" ") {
					t.Errorf("events %v, want %s", reasons, c.event)
				}
			}
			if c.requeue && d.RequeueAfter <= 0 {
				t.Errorf("no requeue")
			}
			if strings.HasPrefix(c.phase, FailedPrefix) && d.Status.Phase != c.st.Phase {
				if d.Status.Reason == "" || d.Status.BootPurpose != "off" {
					t.Errorf("failed without a reason or not powered off: %+v", d.Status)
				}
			}
			// Deciding again on the result changes nothing more: a step
			// is never repeated by a second look.
			if d.Task != nil {
				tk := *d.Task
				again := Decide(Input{Now: in.Now, Machine: c.m, Status: d.Status, Task: &tk, Revision: "abc", Image: in.Image, ImageOnRack: in.ImageOnRack, Report: c.report, Rack: c.rack}, p)
				if again.Task != nil {
					t.Errorf("second decision issued another task %s", again.Task.Action)
				}
			}
		})
	}
}

func TestDecideUnmanagedTouchesNothing(t *testing.T) {
	st := at(PhaseDeployed, "")
	d := Decide(Input{Now: t0, Status: st}, Policy{})
	if d.Task != nil || len(d.Events) > 0 || statusChanged(st, d.Status) {
		t.Fatalf("an unmanaged machine was acted on: %+v", d)
	}
}

func TestDecideFailureReasonNamesTheCause(t *testing.T) {
	st := at(PhaseDeploying, StepAgent)
	d := Decide(Input{Now: t0, Machine: testMachine("deployed"), Status: st, Task: task("netboot", "done"), Report: result(false, "image sha256 mismatch: want ab, got cd")}, Policy{})
	if !strings.Contains(d.Status.Reason, "sha256 mismatch") || d.Status.Attempts != 1 {
		t.Fatalf("reason %q attempts %d", d.Status.Reason, d.Status.Attempts)
	}
	st = at(PhaseCommissioning, StepAgent)
	d = Decide(Input{Now: t0.Add(31 * time.Minute), Machine: testMachine("ready"), Status: st, Task: task("netboot", "done")}, Policy{})
	if !strings.Contains(d.Status.Reason, "never reported") {
		t.Fatalf("timeout reason %q", d.Status.Reason)
	}
}

func TestDecideImageNotReadySaysWhy(t *testing.T) {
	in := Input{Now: t0, Machine: testMachine("deployed"), Status: at(PhaseReady, ""), Image: osImage(""),
		ImageOnRack: onRack("failed", "http://images.invalid/debian.raw: sha256 mismatch: got 00")}
	d := Decide(in, Policy{})
	c := d.Status.Condition(CondImageNotReady)
	if c == nil || c.Status != "True" || !strings.Contains(c.Message, "sha256 mismatch: got 00") || !strings.Contains(c.Message, "rack r1") {
		t.Fatalf("condition %+v, want ImageNotReady True with the rack's reason", c)
	}
	if d.Task != nil {
		t.Fatalf("a deploy whose image the rack cannot serve powered the machine: %+v", d.Task)
	}
	// Deciding again while it waits adds no second event.
	again := Decide(Input{Now: t0.Add(time.Minute), Machine: in.Machine, Status: d.Status, Image: in.Image, ImageOnRack: in.ImageOnRack}, Policy{})
	if len(again.Events) != 0 || again.Task != nil {
		t.Fatalf("second look while waiting: events %+v task %+v", again.Events, again.Task)
	}
	// Once the image is ready the deploy starts, and its clock with it.
	later := t0.Add(2 * time.Hour)
	ready := Decide(Input{Now: later, Machine: in.Machine, Status: again.Status, Image: in.Image, ImageOnRack: onRack("ready", "")}, Policy{})
	if ready.Task == nil || ready.Task.Action != "netboot" || !ready.Status.PhaseStartedAt.Equal(later) {
		t.Fatalf("image ready: task %+v, phase started %s", ready.Task, ready.Status.PhaseStartedAt)
	}
	if c := ready.Status.Condition(CondImageNotReady); c == nil || c.Status != "False" {
		t.Fatalf("condition after ready: %+v", c)
	}
}

func TestDecideDeployedSaysHowItIsKnown(t *testing.T) {
	d := Decide(Input{Now: t0.Add(3 * time.Minute), Machine: testMachine("deployed"), Image: osImage(""), ImageOnRack: onRack("ready", ""),
		Status: at(PhaseDeploying, StepOS), Report: osReport(t0.Add(2 * time.Minute)), Task: doneAt(task("diskboot", "done"), t0.Add(time.Minute))}, Policy{})
	c := d.Status.Condition(CondDeployed)
	if c == nil || c.Reason != "OSReported" || !strings.Contains(c.Message, "m1") || !strings.Contains(c.Message, "0123abcd") {
		t.Fatalf("Deployed condition %+v", c)
	}
	d = Decide(Input{Now: t0, Machine: testMachine("deployed"), Image: osImage("none"), ImageOnRack: onRack("ready", ""),
		Status: at(PhaseDeploying, StepDisk), Task: task("diskboot", "done")}, Policy{})
	if c := d.Status.Condition(CondDeployed); c == nil || !strings.Contains(c.Message, "not confirmed") {
		t.Fatalf("Deployed condition without confirmation %+v", c)
	}
	d = Decide(Input{Now: t0.Add(16 * time.Minute), Machine: testMachine("deployed"), Image: osImage(""), ImageOnRack: onRack("ready", ""),
		Status: at(PhaseDeploying, StepOS), Task: task("diskboot", "done")}, Policy{})
	if !strings.Contains(d.Status.Reason, "did not report in within 15m0s") {
		t.Fatalf("OS timeout reason %q", d.Status.Reason)
	}
}
