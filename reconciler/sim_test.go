package reconciler_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/etcdtest/invtest"
	"github.com/kilnhq/kiln/reconciler"
	"github.com/kilnhq/kiln/spec"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// sim stands in for the rack agents and the machine agents: it speaks
// the real etcd protocol of power tasks (tasks/<rack>/<machine>, pending
// → done) and of agent reports (facts, progress and result written into
// status/machines/<name>, as the rack's agent API does).
type sim struct {
	store *inventory.Store

	mu       sync.Mutex
	executed []inventory.PowerTask    // power tasks carried out, in order
	purposes map[string][]string      // machine → boot purposes it network-booted with
	failures map[string]int           // machine → agent failures still to report
	silent   map[string]bool          // machine agent never reports
	holds    map[string]chan struct{} // "machine/what" → released when closed
	held     map[string]chan struct{} // "machine/what" → closed once something waits there
	taskFail map[string]string        // machine → power error to report
	noOS     map[string]bool          // the deployed OS never reports in
	badImage map[string]string        // image → the rack's reason it cannot serve it
	boot     map[string]string        // machine → its last network-boot task
	// instant agents report only their result (the benchmark).
	instant bool
}

func newSim(store *inventory.Store) *sim {
	return &sim{store: store, purposes: map[string][]string{}, failures: map[string]int{}, silent: map[string]bool{},
		holds: map[string]chan struct{}{}, held: map[string]chan struct{}{}, taskFail: map[string]string{},
		noOS: map[string]bool{}, badImage: map[string]string{}, boot: map[string]string{}}
}

// hold makes the sim wait at "machine/what" (what: an action such as
// diskboot or off, or an agent purpose such as deploy) until released.
// It returns a channel closed once the sim waits there.
func (s *sim) hold(at string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.holds[at] = make(chan struct{})
	s.held[at] = make(chan struct{})
	return s.held[at]
}

func (s *sim) releaseAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, ch := range s.holds {
		close(ch)
		delete(s.holds, k)
	}
}

func (s *sim) wait(ctx context.Context, at string) {
	s.mu.Lock()
	ch, ok := s.holds[at]
	if ok {
		select {
		case <-s.held[at]: // a second arrival: the test's counts will tell
		default:
			close(s.held[at])
		}
	}
	s.mu.Unlock()
	if ok {
		select {
		case <-ch:
		case <-ctx.Done():
		}
	}
}

func (s *sim) run(ctx context.Context) error {
	go s.stageImages(ctx)
	prefix := s.store.Keys().Task("", "")
	rev, err := s.store.RangeRevs(ctx, prefix, 0, func(k string, v []byte, mod int64) error {
		s.consider(ctx, k, v, mod)
		return nil
	})
	if err != nil {
		return err
	}
	wc := s.store.WatchPrefix(ctx, prefix, rev)
	for resp := range wc {
		if resp.Err() != nil {
			return resp.Err()
		}
		for _, ev := range resp.Events {
			if ev.Type == clientv3.EventTypePut {
				s.consider(ctx, string(ev.Kv.Key), ev.Kv.Value, ev.Kv.ModRevision)
			}
		}
	}
	return nil
}

func (s *sim) consider(ctx context.Context, key string, v []byte, mod int64) {
	var t inventory.PowerTask
	if json.Unmarshal(v, &t) != nil || t.State != inventory.TaskPending {
		return
	}
	go s.do(ctx, key, t, mod)
}

// stageImages reports every image of the desired state as rack r1's
// cache would: ready, or failed with the reason in badImage.
func (s *sim) stageImages(ctx context.Context) {
	report := func() {
		snap, err := s.store.Snapshot(ctx, spec.KindImage)
		if err != nil {
			return
		}
		for name, im := range snap.Inventory.Images {
			st := inventory.ImageStatus{Rack: "r1", State: "ready", UpdatedAt: time.Now().UTC()}
			for _, a := range []*spec.Artifact{im.Spec.Kernel, im.Spec.Initrd, im.Spec.Disk} {
				if a != nil {
					st.SHA256s = append(st.SHA256s, a.SHA256)
				}
			}
			s.mu.Lock()
			if why := s.badImage[name]; why != "" {
				st.State, st.Message = "failed", why
			}
			s.mu.Unlock()
			_ = s.store.PutImageStatus(ctx, name, st)
		}
	}
	wc := s.store.WatchPrefix(ctx, s.store.Keys().Desired(), 0)
	report()
	for resp := range wc {
		if resp.Err() != nil {
			return
		}
		report()
	}
}

// do carries out a power task as a rack leader would, then plays the
// machine agent when the machine network-boots.
func (s *sim) do(ctx context.Context, key string, t inventory.PowerTask, mod int64) {
	s.wait(ctx, t.Machine+"/"+t.Action)
	s.mu.Lock()
	perr := s.taskFail[t.Machine]
	s.mu.Unlock()
	t.State, t.DoneAt, t.Agent, t.Power = inventory.TaskDone, time.Now().UTC(), "sim", "on"
	if t.Action == inventory.TaskOff {
		t.Power = "off"
	}
	if perr != "" {
		t.State, t.Error, t.Power = inventory.TaskFailed, perr, ""
	}
	b, _ := json.Marshal(t)
	resp, err := s.store.Client().Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", mod)).
		Then(clientv3.OpPut(key, string(b))).Commit()
	if err != nil || !resp.Succeeded {
		return // replaced meanwhile: that task's outcome is dropped, as the rack does
	}
	s.mu.Lock()
	s.executed = append(s.executed, t)
	s.mu.Unlock()
	rack, _, _ := s.store.Keys().SplitTask(key)
	if t.Action == inventory.TaskDiskboot && perr == "" {
		s.os(ctx, rack, t.Machine)
	}
	if t.Action != inventory.TaskNetboot || perr != "" {
		return
	}
	s.mu.Lock()
	s.boot[t.Machine] = t.ID
	s.mu.Unlock()
	s.agent(ctx, rack, t.Machine, t.Purpose, t.ID)
}

// agent plays the machine agent booted with purpose.
func (s *sim) agent(ctx context.Context, rack, machine, purpose, taskID string) {
	s.mu.Lock()
	s.purposes[machine] = append(s.purposes[machine], purpose)
	silent := s.silent[machine]
	fail := s.failures[machine] > 0
	if fail {
		s.failures[machine]--
	}
	s.mu.Unlock()
	if silent {
		return
	}
	s.wait(ctx, machine+"/"+purpose)
	report := func(fn func(*inventory.MachineReport)) {
		_ = s.store.UpdateReport(ctx, rack, machine, taskID, clientv3.NoLease, fn)
	}
	now := time.Now().UTC()
	if purpose == "commission" {
		report(func(st *inventory.MachineReport) {
			st.Facts = json.RawMessage(`{"cpu":{"count":2},"memoryBytes":1073741824}`)
		})
	}
	if purpose == "deploy" && !s.instant {
		report(func(st *inventory.MachineReport) {
			st.Progress = &inventory.AgentProgress{Phase: "writing", BytesWritten: 1 << 20, TotalBytes: 2 << 20, At: now}
		})
	}
	report(func(st *inventory.MachineReport) {
		st.Result = &inventory.AgentResult{Success: !fail, At: now}
		if fail {
			st.Result.Reason = "simulated " + purpose + " failure"
		}
	})
	if purpose == "commission" && !fail {
		s.fastTrack(ctx, rack, machine, taskID)
	}
}

// fastTrack plays the commissioning agent asking for its next task: when
// the region hands this boot the deploy (fastTrackFrom), it deploys
// without a reboot, its reports filed under the deploy's boot as the
// rack files them.
func (s *sim) fastTrack(ctx context.Context, rack, machine, taskID string) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	key := s.store.Keys().MachineStatus(machine)
	resp, err := s.store.Client().Get(ctx, key)
	if err != nil {
		return
	}
	wc := s.store.Client().Watch(ctx, key, clientv3.WithRev(resp.Header.Revision+1))
	kvs := resp.Kvs
	for {
		for _, kv := range kvs {
			var st inventory.MachineStatus
			if json.Unmarshal(kv.Value, &st) != nil || st.Phase == "commissioning" || st.Step == reconciler.StepFastTrack {
				continue // not decided yet, or in the fast-track window
			}
			if st.FastTrackFrom == taskID {
				s.mu.Lock()
				s.boot[machine] = st.BootTaskID // the OS's report is filed there too
				s.mu.Unlock()
				s.agent(ctx, rack, machine, "deploy", st.BootTaskID)
			}
			return // powered off instead: nothing more to do
		}
		wr, ok := <-wc
		if !ok {
			return
		}
		kvs = kvs[:0]
		for _, ev := range wr.Events {
			kvs = append(kvs, ev.Kv)
		}
	}
}

// os plays the deployed OS reporting in after its disk boot.
func (s *sim) os(ctx context.Context, rack, machine string) {
	s.mu.Lock()
	silent := s.noOS[machine]
	s.mu.Unlock()
	if silent {
		return
	}
	s.wait(ctx, machine+"/os")
	s.mu.Lock()
	boot := s.boot[machine] // the OS token is of the deploy's network boot
	s.mu.Unlock()
	_ = s.store.UpdateReport(ctx, rack, machine, boot, clientv3.NoLease, func(r *inventory.MachineReport) {
		r.OSReport = &inventory.OSReport{Hostname: machine, At: time.Now().UTC()}
	})
}

// count counts executed tasks of machine with action.
func (s *sim) count(machine, action string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, t := range s.executed {
		if t.Machine == machine && t.Action == action {
			n++
		}
	}
	return n
}

func (s *sim) booted(machine, purpose string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, p := range s.purposes[machine] {
		if p == purpose {
			n++
		}
	}
	return n
}

// lab builds an inventory of rack r1 with the given machine documents
// (YAML mappings of spec fields, by machine name).
func lab(t testing.TB, machines map[string]string) *spec.Inventory {
	t.Helper()
	return invtest.Load(t, labYAML(machines))
}

// labYAML is lab's inventory as YAML, for tests that add documents.
func labYAML(machines map[string]string) string {
	var b strings.Builder
	b.WriteString(`apiVersion: kiln.dev/v1alpha1
kind: Rack
metadata: {name: r1}
---
apiVersion: kiln.dev/v1alpha1
kind: Subnet
metadata: {name: net1}
spec: {cidr: 192.0.2.0/24, rack: r1, gateway: 192.0.2.1}
---
apiVersion: kiln.dev/v1alpha1
kind: Image
metadata: {name: debian}
spec:
  purpose: os
  disk: {url: "http://images.invalid/debian.raw", sha256: "9a8b7c6d5e4f30211203f4e5d6c7b8a99a8b7c6d5e4f30211203f4e5d6c7b8a9"}
---
apiVersion: kiln.dev/v1alpha1
kind: Image
metadata: {name: debian-next}
spec:
  purpose: os
  disk: {url: "http://images.invalid/debian-next.raw", sha256: "1a8b7c6d5e4f30211203f4e5d6c7b8a99a8b7c6d5e4f30211203f4e5d6c7b8a9"}
`)
	i := 0
	for _, name := range slices.Sorted(maps.Keys(machines)) {
		i++
		fmt.Fprintf(&b, `---
apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata: {name: %s}
spec:
  bmc: {driver: manual}
  interfaces: [{name: eno1, mac: "02:00:00:00:%02x:%02x", subnet: net1, ip: 192.0.2.%d}]
`, name, i/256, i%256, 10+i)
		if !strings.Contains(machines[name], "image:") {
			b.WriteString("  image: debian\n")
		}
		for _, line := range strings.Split(strings.TrimSpace(machines[name]), "\n") {
			if line != "" {
				b.WriteString("  " + line + "\n")
			}
		}
	}
	return b.String()
}
