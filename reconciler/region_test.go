package reconciler_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/etcd"
	"github.com/kilnhq/kiln/inventory/etcdtest"
	"github.com/kilnhq/kiln/reconciler"
	"github.com/kilnhq/kiln/spec"
	"github.com/kilnhq/kiln/spec/kilntest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestMain doubles as a region server process for the kill -9 tests:
// with KILN_TEST_REGION set, it runs a region reconciler against the etcd
// in KILN_TEST_ETCD until killed.
func TestMain(m *testing.M) {
	if id := os.Getenv("KILN_TEST_REGION"); id != "" {
		os.Exit(regionProcess(id, os.Getenv("KILN_TEST_ETCD")))
	}
	os.Exit(m.Run())
}

// testPolicy keeps the lifecycle quick: retries after 100 ms.
var testPolicy = reconciler.Policy{RetryBackoff: 100 * time.Millisecond, MaxRetryBackoff: 400 * time.Millisecond, MaxAttempts: 3,
	PowerTimeout: time.Minute}

func regionProcess(id, endpoint string) int {
	cli, err := etcd.Connect(etcd.Config{Endpoints: []string{endpoint}})
	if err != nil {
		return 2
	}
	store := inventory.NewStore(cli, "", quiet())
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	reg := prometheus.NewRegistry()
	workers, _ := strconv.Atoi(os.Getenv("KILN_TEST_WORKERS"))
	r := reconciler.New(reconciler.Config{ID: id, Policy: testPolicy, Workers: workers}, store, reg, log)
	if addr := os.Getenv("KILN_TEST_METRICS"); addr != "" {
		go http.ListenAndServe(addr, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	}
	if err := r.Run(context.Background()); err != nil {
		return 1
	}
	return 0
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

type env struct {
	t     *testing.T
	ctx   context.Context
	stop  context.CancelFunc
	cli   *clientv3.Client
	cfg   etcd.Config
	store *inventory.Store
	sim   *sim
}

func newEnv(t *testing.T) *env {
	cli, cfg := etcdtest.Start(t)
	return envOn(t, cli, cfg)
}

// envOn is an env on an etcd already running; e.stop ends its simulated
// rack and regions.
func envOn(t *testing.T, cli *clientv3.Client, cfg etcd.Config) *env {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	e := &env{t: t, ctx: ctx, stop: cancel, cli: cli, cfg: cfg, store: inventory.NewStore(cli, "", quiet())}
	e.sim = newSim(e.store)
	go e.sim.run(ctx)
	return e
}

func (e *env) apply(inv *spec.Inventory, rev string) {
	e.t.Helper()
	if _, err := e.store.Apply(e.ctx, inv, inventory.ApplyMeta{Source: "test", Revision: rev}); err != nil {
		e.t.Fatal(err)
	}
}

// region runs an in-process region server until the test ends.
func (e *env) region(id string, cfg reconciler.Config) (*reconciler.Region, *prometheus.Registry) {
	cfg.ID = id
	if cfg.Policy.MaxAttempts == 0 {
		cfg.Policy = testPolicy
	}
	reg := prometheus.NewRegistry()
	r := reconciler.New(cfg, e.store, reg, quiet())
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	e.t.Cleanup(func() { cancel(); <-done })
	return r, reg
}

// waitStatus waits, on a watch, until the machine's status satisfies ok.
func (e *env) waitStatus(machine string, timeout time.Duration, what string, ok func(inventory.MachineStatus) bool) inventory.MachineStatus {
	e.t.Helper()
	return waitJSON(e, machine, e.store.Keys().MachineStatus(machine), timeout, what, ok)
}

// waitReport waits until rack r1's report of the machine satisfies ok.
func (e *env) waitReport(machine string, timeout time.Duration, what string, ok func(inventory.MachineReport) bool) inventory.MachineReport {
	e.t.Helper()
	return waitJSON(e, machine, e.store.Keys().Report("r1", machine), timeout, what, ok)
}

// waitJSON waits, on a watch, until the JSON value at key satisfies ok.
func waitJSON[T any](e *env, machine, key string, timeout time.Duration, what string, ok func(T) bool) T {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, timeout)
	defer cancel()
	resp, err := e.cli.Get(ctx, key)
	if err != nil {
		e.t.Fatal(err)
	}
	var st T
	if len(resp.Kvs) > 0 {
		json.Unmarshal(resp.Kvs[0].Value, &st)
		if ok(st) {
			return st
		}
	}
	for wr := range e.cli.Watch(ctx, key, clientv3.WithRev(resp.Header.Revision+1)) {
		for _, ev := range wr.Events {
			var zero T
			st = zero
			json.Unmarshal(ev.Kv.Value, &st)
			if ok(st) {
				return st
			}
		}
	}
	b, _ := json.MarshalIndent(st, "", " ")
	tasks, _ := inventory.ListJSON[inventory.PowerTask](context.Background(), e.store, e.store.Keys().Task("", ""))
	e.t.Fatalf("%s: %s not reached within %s; last value of %s:\n%s\ntasks: %+v\nevents: %+v", machine, what, timeout, key, b, tasks, e.events(machine))
	return st
}

func (e *env) waitPhase(machine, phase string, timeout time.Duration) inventory.MachineStatus {
	e.t.Helper()
	return e.waitStatus(machine, timeout, "phase "+phase, func(st inventory.MachineStatus) bool { return st.Phase == phase })
}

func (e *env) events(machine string) []inventory.Event {
	evs, _, err := e.store.Events(e.ctx, machine)
	if err != nil {
		e.t.Fatal(err)
	}
	return evs
}

func hasEvent(evs []inventory.Event, reason, to string) bool {
	for _, ev := range evs {
		if ev.Reason == reason && (to == "" || ev.To == to) {
			return true
		}
	}
	return false
}

// The fast-track window: w, commissioned while ready, stays up; deployed
// within the window, its running agent takes the deploy (one network boot
// in all). x, left ready, is powered off when the window ends.
func TestFastTrackWindow(t *testing.T) {
	e := newEnv(t)
	machines := map[string]string{"w": "state: ready", "x": "state: ready"}
	e.apply(lab(t, machines), "r1")
	waitJSON(e, "w", e.store.Keys().ImageStatus("r1", "debian"), time.Minute, "image debian ready on r1",
		func(st inventory.ImageStatus) bool { return st.State == "ready" })
	cfg := reconciler.Config{Policy: testPolicy}
	cfg.Policy.FastTrackWindow = 8 * time.Second
	e.region("region-1", cfg)

	inWindow := func(st inventory.MachineStatus) bool {
		return st.Phase == "ready" && st.Step == reconciler.StepFastTrack
	}
	e.waitStatus("w", time.Minute, "ready in the fast-track window", inWindow)
	machines["w"] = "state: deployed"
	e.apply(lab(t, machines), "r2")
	e.waitPhase("w", "deployed", time.Minute)
	if !hasEvent(e.events("w"), "FastTrack", "deploying") {
		t.Errorf("no FastTrack event for w: %+v", e.events("w"))
	}
	if n, off := e.sim.count("w", "netboot"), e.sim.count("w", "off"); n != 1 || off != 0 {
		t.Errorf("w: %d network boots and %d power-offs, want 1 and 0 (commissioning only)", n, off)
	}

	st := e.waitStatus("x", time.Minute, "the window closed", func(st inventory.MachineStatus) bool { return st.Phase == "ready" && st.Step == "" })
	if st.BootPurpose != "off" || !hasEvent(e.events("x"), "FastTrackClosed", "ready") {
		t.Fatalf("x after its window: purpose %q, events %+v", st.BootPurpose, e.events("x"))
	}
	kilntest.Eventually(t, 30*time.Second, "x powered off", func() bool { return e.sim.count("x", "off") == 1 })
}

func TestFullLifecycle(t *testing.T) {
	e := newEnv(t)
	machines := map[string]string{"a": "state: ready", "b": "state: deployed", "c": "state: deployed\nerase: quick"}
	e.apply(lab(t, machines), "r1")
	// Fast track needs the image on the rack when commissioning ends; the
	// simulated rack reports it on its own time, so wait for it first.
	waitJSON(e, "b", e.store.Keys().ImageStatus("r1", "debian"), time.Minute, "image debian ready on r1",
		func(st inventory.ImageStatus) bool { return st.State == "ready" })
	_, reg := e.region("region-1", reconciler.Config{})

	e.waitPhase("a", "ready", time.Minute)
	st := e.waitPhase("b", "deployed", time.Minute)
	if st.DeployedImage != "debian" || st.BootPurpose != "local" || st.SourceRevision != "r1" || len(st.Facts) == 0 {
		t.Fatalf("deployed status incomplete: %+v", st)
	}
	if c := st.Condition("Deployed"); c == nil || c.Status != "True" {
		t.Fatalf("Deployed condition: %+v", st.Conditions)
	}
	e.waitPhase("c", "deployed", time.Minute)
	for _, r := range []string{"Commissioning", "Commissioned", "FastTrack", "Deployed"} { // b is deployed from the start: fast track
		if !hasEvent(e.events("b"), r, "") {
			t.Errorf("no %s event for b: %+v", r, e.events("b"))
		}
	}

	// Release b (no erase) and c (erase quick).
	machines["b"], machines["c"] = "state: ready", "state: ready\nerase: quick"
	e.apply(lab(t, machines), "r2")
	st = e.waitPhase("b", "ready", time.Minute)
	if st.DeployedImage != "" || st.BootPurpose != "off" {
		t.Fatalf("released status: %+v", st)
	}
	e.waitPhase("c", "ready", time.Minute)
	if !hasEvent(e.events("c"), "Erasing", "erasing") || !hasEvent(e.events("c"), "Erased", "ready") {
		t.Fatalf("c was not erased on release: %+v", e.events("c"))
	}
	if n := e.sim.booted("b", "erase"); n != 0 {
		t.Fatalf("b (erase: none) was erased %d times", n)
	}
	// Every destructive boot happened exactly once.
	for m, want := range map[string]map[string]int{"a": {"commission": 1, "deploy": 0}, "b": {"deploy": 1}, "c": {"deploy": 1, "erase": 1}} {
		for p, n := range want {
			if got := e.sim.booted(m, p); got != n {
				t.Errorf("%s booted %d times to %s, want %d", m, got, p, n)
			}
		}
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP kiln_region_leader 1 while this server leads the region and reconciles.
# TYPE kiln_region_leader gauge
kiln_region_leader 1
`), "kiln_region_leader"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(reg, "kiln_machines"); n == 0 {
		t.Error("no kiln_machines series")
	}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "kiln_machines" {
			for _, m := range mf.Metric {
				if m.Label[0].GetValue() == "ready" && m.Label[1].GetValue() == "r1" && m.Gauge.GetValue() != 3 {
					t.Errorf("kiln_machines{phase=ready,rack=r1} = %v, want 3", m.Gauge.GetValue())
				}
			}
		}
		if mf.GetName() == "kiln_phase_duration_seconds" {
			for _, m := range mf.Metric {
				if m.Label[0].GetValue() == "deploying" && m.Histogram.GetSampleCount() < 2 {
					t.Errorf("deploying phase observed %d times, want 2", m.Histogram.GetSampleCount())
				}
			}
		}
	}
}

func TestFailureRetryAndExhaustion(t *testing.T) {
	e := newEnv(t)
	e.sim.failures["flaky"] = 2  // fails twice, then commissions
	e.sim.failures["broken"] = 9 // never commissions
	machines := map[string]string{"flaky": "state: ready", "broken": "state: ready"}
	e.apply(lab(t, machines), "r1")
	_, reg := e.region("region-1", reconciler.Config{})

	st := e.waitPhase("flaky", "ready", time.Minute)
	if st.Attempts != 0 || st.Reason != "" {
		t.Fatalf("a success must clear the failure: %+v", st)
	}
	evs := e.events("flaky")
	if !hasEvent(evs, "Failed", "failed-commissioning") || !hasEvent(evs, "Retry", "commissioning") {
		t.Fatalf("no failure and retry events: %+v", evs)
	}
	st = e.waitStatus("broken", time.Minute, "3 failed attempts", func(st inventory.MachineStatus) bool {
		return st.Phase == "failed-commissioning" && st.Attempts == 3
	})
	if !strings.Contains(st.Reason, "simulated commission failure") || st.BootPurpose != "off" {
		t.Fatalf("failed status: %+v", st)
	}
	// flaky failed twice and broken three times, each counted once.
	if n := counterValue(t, reg, "kiln_machine_failures_total", "failed-commissioning"); n != 5 {
		t.Errorf("kiln_machine_failures_total{phase=failed-commissioning} = %v, want 5", n)
	}
	// After the attempts ran out nothing happens until a person acts ...
	if n := e.sim.booted("broken", "commission"); n != 3 {
		t.Fatalf("broken booted %d times, want 3", n)
	}
	// ... here by raising commissionGeneration.
	e.sim.mu.Lock()
	e.sim.failures["broken"] = 0
	e.sim.mu.Unlock()
	machines["broken"] = "state: ready\ncommissionGeneration: 1"
	e.apply(lab(t, machines), "r2")
	st = e.waitPhase("broken", "ready", time.Minute)
	if st.CommissionedGeneration != 1 {
		t.Fatalf("commissioned generation %d", st.CommissionedGeneration)
	}
}

func TestPhaseTimeoutAndPowerFailure(t *testing.T) {
	e := newEnv(t)
	e.sim.silent["mute"] = true
	e.sim.taskFail["nobmc"] = "BMC 192.0.2.200:623 unreachable: i/o timeout"
	e.apply(lab(t, map[string]string{"mute": "state: ready", "nobmc": "state: ready"}), "r1")
	pol := testPolicy
	pol.Timeouts = map[string]time.Duration{reconciler.PhaseCommissioning: time.Second}
	pol.MaxAttempts = 1
	e.region("region-1", reconciler.Config{Policy: pol})
	st := e.waitPhase("mute", "failed-commissioning", time.Minute)
	if !strings.Contains(st.Reason, "timed out") || !strings.Contains(st.Reason, "never reported") {
		t.Fatalf("timeout reason: %q", st.Reason)
	}
	st = e.waitPhase("nobmc", "failed-commissioning", time.Minute)
	if !strings.Contains(st.Reason, "unreachable") {
		t.Fatalf("power failure reason: %q", st.Reason)
	}
	if c := st.Condition("PowerReachable"); c == nil || c.Status != "False" {
		t.Fatalf("PowerReachable: %+v", st.Conditions)
	}
}

func TestMaintenancePausesAndResumes(t *testing.T) {
	e := newEnv(t)
	held := e.sim.hold("m/deploy")
	machines := map[string]string{"m": "state: deployed"}
	e.apply(lab(t, machines), "r1")
	e.region("region-1", reconciler.Config{})
	<-held // deploying, the agent is writing the disk
	machines["m"] = "state: deployed\nmaintenance: true"
	e.apply(lab(t, machines), "r2")
	st := e.waitPhase("m", "maintenance", time.Minute)
	if st.Paused != "deploying" {
		t.Fatalf("paused %q", st.Paused)
	}
	diskboots := e.sim.count("m", "diskboot")
	e.sim.releaseAll() // the agent finishes while the machine is paused
	e.waitReport("m", time.Minute, "the agent's result", func(r inventory.MachineReport) bool { return r.Result != nil })
	// Nothing is acted on while paused: prove it by a later, unrelated
	// write that the reconciler sees and must ignore.
	machines["n"] = "state: ready"
	e.apply(lab(t, machines), "r3")
	e.waitPhase("n", "ready", time.Minute)
	if st := e.waitPhase("m", "maintenance", time.Second); st.Phase != "maintenance" || e.sim.count("m", "diskboot") != diskboots {
		t.Fatalf("a paused machine was acted on: %+v", st)
	}
	machines["m"] = "state: deployed"
	e.apply(lab(t, machines), "r4")
	e.waitPhase("m", "deployed", time.Minute)
	if !hasEvent(e.events("m"), "Resumed", "") {
		t.Fatalf("no Resumed event: %+v", e.events("m"))
	}
}

func TestUnrelatedEditsNeverRedeployOrErase(t *testing.T) {
	e := newEnv(t)
	machines := map[string]string{"m": "state: deployed"}
	e.apply(lab(t, machines), "r1")
	e.region("region-1", reconciler.Config{})
	e.waitPhase("m", "deployed", time.Minute)
	machines["m"] = "state: deployed\nimage: debian-next\nerase: full\nzone: z2"
	e.apply(lab(t, machines), "r2")
	st := e.waitStatus("m", time.Minute, "ImageDrift", func(st inventory.MachineStatus) bool {
		c := st.Condition("ImageDrift")
		return c != nil && c.Status == "True"
	})
	if st.Phase != "deployed" || e.sim.booted("m", "deploy") != 1 || e.sim.booted("m", "erase") != 0 {
		t.Fatalf("an unrelated edit acted on the machine: %+v", st)
	}
	// Raising deployGeneration is how a redeploy is asked for.
	machines["m"] = "state: deployed\nimage: debian-next\nerase: full\ndeployGeneration: 1"
	e.apply(lab(t, machines), "r3")
	st = e.waitStatus("m", time.Minute, "redeployed", func(st inventory.MachineStatus) bool {
		return st.Phase == "deployed" && st.DeployedImage == "debian-next"
	})
	if n := e.sim.booted("m", "deploy"); n != 2 {
		t.Fatalf("deploy boots %d, want 2", n)
	}
}

func TestLeaderKillInEveryPhase(t *testing.T) {
	for _, n := range []int{2, 3} {
		t.Run(map[int]string{2: "two-servers", 3: "three-servers"}[n], func(t *testing.T) { leaderKill(t, n) })
	}
}

// leaderKill holds a machine in every phase, kills the region leader
// with SIGKILL (n-1 times, so that one server is left), and checks that
// the survivors finish every machine without repeating a destructive
// step or losing one.
func leaderKill(t *testing.T, n int) {
	e := newEnv(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	procs := map[string]*exec.Cmd{}
	for i := range n {
		id := "region-" + string(rune('a'+i))
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), "KILN_TEST_REGION="+id, "KILN_TEST_ETCD="+e.cfg.Endpoints[0])
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		procs[id] = cmd
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	}
	// Statuses as earlier leaders left them, so each machine starts in
	// the phase it is to be caught in.
	seed := func(name string, st inventory.MachineStatus) {
		b, _ := json.Marshal(st)
		if _, err := e.cli.Put(e.ctx, e.store.Keys().MachineStatus(name), string(b)); err != nil {
			t.Fatal(err)
		}
	}
	ready := inventory.MachineStatus{Phase: "ready", Rack: "r1", PhaseStartedAt: time.Now().UTC()}
	deployed := inventory.MachineStatus{Phase: "deployed", Rack: "r1", DeployedImage: "debian", PhaseStartedAt: time.Now().UTC()}
	seed("dep-agent", ready)
	seed("dep-disk", ready)
	seed("rel", deployed)
	seed("era", deployed)
	holds := []<-chan struct{}{
		e.sim.hold("com/commission"),    // commissioning, agent step
		e.sim.hold("dep-agent/deploy"),  // deploying, agent writing the disk
		e.sim.hold("dep-disk/diskboot"), // deploying, booting the disk
		e.sim.hold("rel/off"),           // releasing, powering off
		e.sim.hold("era/erase"),         // erasing, agent wiping
	}
	machines := map[string]string{"com": "state: ready", "dep-agent": "state: deployed", "dep-disk": "state: deployed",
		"rel": "state: ready", "era": "state: ready\nerase: full"}
	e.apply(lab(t, machines), "r1")
	for _, h := range holds {
		select {
		case <-h:
		case <-time.After(2 * time.Minute):
			sts, _ := e.store.MachineStatuses(e.ctx)
			t.Fatalf("machines did not reach their phases: %+v", sts)
		}
	}
	for kill := 1; kill < n; kill++ {
		leader := e.leader("")
		start := time.Now()
		if err := procs[leader].Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		procs[leader].Wait()
		next := e.leader(leader)
		t.Logf("kill -9 of %s: %s leads %s later", leader, next, time.Since(start).Round(10*time.Millisecond))
	}
	e.sim.releaseAll()
	for m, phase := range map[string]string{"com": "ready", "dep-agent": "deployed", "dep-disk": "deployed", "rel": "ready", "era": "ready"} {
		e.waitPhase(m, phase, 2*time.Minute)
	}
	for _, c := range []struct{ m, purpose string }{{"com", "commission"}, {"dep-agent", "deploy"}, {"dep-disk", "deploy"}, {"era", "erase"}} {
		if got := e.sim.booted(c.m, c.purpose); got != 1 {
			t.Errorf("%s booted to %s %d times across the kills, want exactly 1", c.m, c.purpose, got)
		}
	}
	if got := e.sim.count("dep-disk", "diskboot"); got != 1 {
		t.Errorf("dep-disk disk-booted %d times, want 1", got)
	}
}

// leader waits for a region leader other than not and returns its ID.
func (e *env) leader(not string) string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	defer cancel()
	prefix := e.store.Keys().RegionElection()
	for {
		resp, err := e.cli.Get(ctx, prefix, clientv3.WithFirstCreate()...)
		if err != nil {
			e.t.Fatal(err)
		}
		if len(resp.Kvs) > 0 && string(resp.Kvs[0].Value) != not {
			return string(resp.Kvs[0].Value)
		}
		wc := e.cli.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
		select {
		case <-wc:
		case <-ctx.Done():
			e.t.Fatal(errors.New("no region leader within a minute"))
		}
	}
}

// A status that cannot be decoded leaves its machine alone: starting it
// over would power-cycle a machine that may be deployed.
func TestUndecodableStatusLeavesMachineAlone(t *testing.T) {
	e := newEnv(t)
	if _, err := e.cli.Put(e.ctx, e.store.Keys().MachineStatus("garbled"), "{not json"); err != nil {
		t.Fatal(err)
	}
	e.apply(lab(t, map[string]string{"garbled": "state: deployed", "fine": "state: ready"}), "r1")
	_, reg := e.region("region-1", reconciler.Config{})
	e.waitPhase("fine", "ready", time.Minute) // the region has been at work meanwhile
	resp, err := e.cli.Get(e.ctx, e.store.Keys().MachineStatus("garbled"))
	if err != nil {
		t.Fatal(err)
	}
	if string(resp.Kvs[0].Value) != "{not json" || e.sim.count("garbled", "netboot") != 0 {
		t.Fatalf("the garbled machine was acted on: status %q, netboots %d", resp.Kvs[0].Value, e.sim.count("garbled", "netboot"))
	}
	if v := counterValue(t, reg, "kiln_reconcile_total", "error"); v < 1 {
		t.Fatalf("kiln_reconcile_total{result=error} = %v, want ≥ 1", v)
	}
}

// counterValue reads one labelled counter from a registry.
func counterValue(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.Metric {
			if mf.GetName() == name && m.Label[0].GetValue() == label {
				return m.Counter.GetValue()
			}
		}
	}
	t.Fatalf("no %s{%q}", name, label)
	return 0
}

// A deploy waits while the rack reports its image unservable, and the
// deployed state waits for the OS to report in.
func TestDeployWaitsForImageAndOS(t *testing.T) {
	e := newEnv(t)
	e.sim.mu.Lock()
	e.sim.badImage["debian"] = "http://images.invalid/debian.raw: sha256 mismatch"
	e.sim.noOS["mute"] = true
	e.sim.mu.Unlock()
	ready := inventory.MachineStatus{Phase: "ready", Rack: "r1", PhaseStartedAt: time.Now().UTC()}
	for _, m := range []string{"dep", "mute"} {
		b, _ := json.Marshal(ready)
		if _, err := e.cli.Put(e.ctx, e.store.Keys().MachineStatus(m), string(b)); err != nil {
			t.Fatal(err)
		}
	}
	e.apply(lab(t, map[string]string{"dep": "state: deployed", "mute": "state: deployed\nimage: debian-next"}), "r1")
	pol := testPolicy
	pol.OSReportTimeout = 2 * time.Second
	pol.MaxAttempts = 1
	e.region("region-1", reconciler.Config{Policy: pol})

	st := e.waitStatus("dep", time.Minute, "ImageNotReady with the rack's reason", func(st inventory.MachineStatus) bool {
		c := st.Condition(reconciler.CondImageNotReady)
		return c != nil && c.Status == "True" && strings.Contains(c.Message, "sha256 mismatch")
	})
	if st.Phase != "deploying" || st.Step != reconciler.StepImage {
		t.Fatalf("waiting deploy: %+v", st)
	}
	if n := e.sim.count("dep", "netboot"); n != 0 {
		t.Fatalf("the machine was network-booted %d times for an image its rack cannot serve", n)
	}
	// The rack fixes its cache: the deploy goes on, and ends when the OS reports in.
	e.sim.mu.Lock()
	delete(e.sim.badImage, "debian")
	e.sim.mu.Unlock()
	if err := e.store.PutImageStatus(e.ctx, "debian", inventory.ImageStatus{Rack: "r1", State: "ready", SHA256s: []string{debianSHA}}); err != nil {
		t.Fatal(err)
	}
	st = e.waitPhase("dep", "deployed", time.Minute)
	if c := st.Condition(reconciler.CondDeployed); c == nil || c.Reason != "OSReported" || st.OSReport == nil {
		t.Fatalf("deployed without the OS's word: %+v", st.Conditions)
	}
	// An OS that never reports fails the deploy, saying so.
	st = e.waitPhase("mute", "failed-deploying", time.Minute)
	if !strings.Contains(st.Reason, "did not report in") || e.sim.count("mute", "diskboot") != 1 {
		t.Fatalf("silent OS: reason %q, disk boots %d", st.Reason, e.sim.count("mute", "diskboot"))
	}
}

const debianSHA = "9a8b7c6d5e4f30211203f4e5d6c7b8a99a8b7c6d5e4f30211203f4e5d6c7b8a9"
