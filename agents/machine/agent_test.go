package machine

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kilnhq/kiln/agents/machine/facts"
	"github.com/kilnhq/kiln/spec"
	"github.com/kilnhq/kiln/spec/agentapi"
	"github.com/kilnhq/kiln/spec/kilntest"
)

// syncBuffer is a console the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newTestAgent(t *testing.T, env *rackEnv, token string, disks ...agentapi.Disk) (*Agent, *syncBuffer) {
	c := env.client(token)
	roots := facts.Roots{Sys: "facts/testdata/sys", Proc: "facts/testdata/proc", Dev: "facts/testdata/dev"}
	var cs []facts.Collector
	for _, col := range facts.Default(roots, 0, env.log) {
		if col.Name() != "lldp" {
			cs = append(cs, col)
		}
	}
	console := &syncBuffer{}
	return &Agent{
		Client:     c,
		Deployer:   &Deployer{Client: c, HTTP: env.boot.Client(), Log: env.log},
		Eraser:     &Eraser{Client: c, Log: env.log},
		Collectors: cs,
		Disks:      func() ([]agentapi.Disk, error) { return disks, nil },
		Arch:       "amd64",
		Log:        env.log,
		Console:    console,
		// After commissioning: ask for a next task briefly (fast track).
		FastTrackPoll: 5 * time.Millisecond, FastTrackWait: 50 * time.Millisecond,
	}, console
}

// Fast track: after commissioning, the agent asks for its next task; once
// the rack says deploy, it deploys without a reboot, with the same token.
func TestAgentFastTrack(t *testing.T) {
	t.Parallel()
	img := gptImage(t)
	env := newRackEnv(t)
	env.rack.SetImage("disk.raw.zst", zst(t, img), "")
	env.rack.SetPurpose(agentapi.PurposeCommission)
	disk := agentapi.Disk{Name: "vda", Path: tempDisk(t, diskSize), SizeBytes: diskSize}
	a, console := newTestAgent(t, env, testToken, disk)
	a.FastTrackWait = time.Minute
	done := make(chan error, 1)
	go func() { done <- a.Run(context.Background()) }()
	kilntest.Eventually(t, 30*time.Second, "the commissioning result", func() bool { return len(env.rack.Results()) == 1 })
	env.rack.SetPurpose(agentapi.PurposeDeploy)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	rs := env.rack.Results()
	if len(rs) != 2 || !rs[0].Success || !rs[1].Success || !strings.Contains(rs[1].Reason, "image debian written to ") {
		t.Fatalf("results = %+v, want commissioning then the deploy, both successful", rs)
	}
	checkDeployed(t, img, disk.Path)
	if !strings.Contains(console.String(), "kiln-agent: fast track: task deploy") {
		t.Errorf("console:\n%s", console)
	}
}

func TestAgentCommission(t *testing.T) {
	t.Parallel()
	env := newRackEnv(t)
	a, console := newTestAgent(t, env, testToken)
	if err := a.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	reps := env.rack.Reports()
	if len(reps) != 2 || reps[0].Facts == nil || reps[1].Result == nil || !reps[1].Result.Success {
		t.Fatalf("reports = %+v", reps)
	}
	var f agentapi.Facts
	if err := json.Unmarshal(reps[0].Facts, &f); err != nil {
		t.Fatal(err)
	}
	if f.Version != agentapi.FactsVersion || f.CPU.Count != 3 || len(f.Disks) != 3 || len(f.NICs) != 2 || f.DMI.Serial != "KILN-VM-2" {
		t.Errorf("facts = %+v", f)
	}
	if !strings.Contains(reps[1].Result.Reason, "facts reported: 3 CPUs, 1.9 GiB memory, 3 disks, 2 NICs") {
		t.Errorf("reason = %q", reps[1].Result.Reason)
	}
	for _, line := range []string{"kiln-agent: facts reported\n", "kiln-agent: result success\n", "kiln-agent: result reported\n"} {
		if !strings.Contains(console.String(), line) {
			t.Errorf("console lacks %q:\n%s", line, console)
		}
	}
}

func TestAgentDeploy(t *testing.T) {
	t.Parallel()
	img := gptImage(t)
	for name, tc := range map[string]struct {
		sha, wantReason string
		success         bool
	}{
		"ok":         {success: true, wantReason: "image debian written to "},
		"wrong hash": {sha: strings.Repeat("1", 64), wantReason: "expected sha256 " + strings.Repeat("1", 64) + ", got "},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			env := newRackEnv(t)
			env.rack.SetImage("disk.raw.zst", zst(t, img), tc.sha)
			env.rack.SetPurpose(agentapi.PurposeDeploy)
			disk := agentapi.Disk{Name: "vda", Path: tempDisk(t, diskSize), SizeBytes: diskSize}
			a, console := newTestAgent(t, env, testToken, disk)
			err := a.Run(context.Background())
			if (err == nil) != tc.success {
				t.Fatalf("Run: %v", err)
			}
			rs := env.rack.Results()
			if len(rs) != 1 || rs[0].Success != tc.success || !strings.Contains(rs[0].Reason, tc.wantReason) {
				t.Fatalf("results = %+v, want success=%v with %q", rs, tc.success, tc.wantReason)
			}
			if tc.success {
				checkDeployed(t, img, disk.Path)
				checkSeed(t, env, disk.Path)
				if !strings.Contains(console.String(), "kiln-agent: result success\n") {
					t.Errorf("console:\n%s", console)
				}
			} else if !strings.Contains(console.String(), "kiln-agent: result failure: deploy to "+disk.Path+": image sha256 mismatch") {
				t.Errorf("console:\n%s", console)
			}
		})
	}
}

func TestAgentDeployNoDisk(t *testing.T) {
	t.Parallel()
	env := newRackEnv(t)
	env.rack.SetImage("disk.raw", []byte("x"), "")
	env.rack.SetPurpose(agentapi.PurposeDeploy)
	env.rack.SetSpec(func(s *spec.MachineSpec) { s.RootDisk = nil })
	a, _ := newTestAgent(t, env, testToken) // no disks at all
	if err := a.Run(context.Background()); err == nil {
		t.Fatal("deploy without disks succeeded")
	}
	rs := env.rack.Results()
	if len(rs) != 1 || rs[0].Success || !strings.Contains(rs[0].Reason, "no disk matches the root disk selector {} (any disk that is not removable); disks found: none") {
		t.Fatalf("results = %+v", rs)
	}
}

func TestAgentErase(t *testing.T) {
	t.Parallel()
	img := gptImage(t)
	env := newRackEnv(t)
	env.rack.SetPurpose(agentapi.PurposeErase)
	env.rack.SetSpec(func(s *spec.MachineSpec) { s.Erase = EraseFull })
	d1, d2 := dirtyDisk(t, img, 9<<20), dirtyDisk(t, img, 10<<20)
	d2.Name = "vdc"
	usb := dirtyDisk(t, img, 9<<20)
	usb.Removable = true
	a, _ := newTestAgent(t, env, testToken, d1, d2, usb)
	if err := a.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	rs := env.rack.Results()
	if len(rs) != 1 || !rs[0].Success || !strings.Contains(rs[0].Reason, "erased "+d1.Path+": 9 MiB of zeros written; "+d2.Path+": 10 MiB") {
		t.Fatalf("results = %+v", rs)
	}
	for _, d := range []agentapi.Disk{d1, d2} {
		if !wiped(t, d.Path) {
			t.Errorf("%s not erased", d.Path)
		}
	}
	if wiped(t, usb.Path) {
		t.Error("the removable disk was erased")
	}
}

// TestAgentTaskRefused: with a stale token the task cannot be fetched and
// the result cannot be reported either; the console says both.
func TestAgentTaskRefused(t *testing.T) {
	t.Parallel()
	env := newRackEnv(t)
	a, console := newTestAgent(t, env, "stale-token")
	err := a.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "fetch task") || !strings.Contains(err.Error(), "403") {
		t.Fatalf("err = %v", err)
	}
	out := console.String()
	if !strings.Contains(out, "kiln-agent: result failure: fetch task: GET ") || !strings.Contains(out, "kiln-agent: cannot report the result to ") {
		t.Errorf("console:\n%s", out)
	}
	if len(env.rack.Reports()) != 0 {
		t.Error("reports stored with a stale token")
	}
}
