package reconciler_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/etcd"
	"github.com/kilnhq/kiln/inventory/etcdtest"
	"github.com/kilnhq/kiln/reconciler"
	"github.com/kilnhq/kiln/spec/kilntest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A snapshot taken mid-lifecycle (kiln backup) and restored into a fresh
// etcd (kiln restore) holds every key as it was, and a region on it
// carries on from there: nothing finished is done again, and the machine
// caught mid-deploy finishes.
func TestBackupRestoreMidLifecycle(t *testing.T) {
	e := newEnv(t)
	e.sim.failures["broken"] = 9
	held := e.sim.hold("dep/deploy") // dep stays in deploying, its agent writing the disk
	machines := map[string]string{"rdy": "state: ready", "done": "state: deployed", "dep": "state: deployed", "broken": "state: ready"}
	e.apply(lab(t, machines), "r1")
	e.region("region-1", reconciler.Config{})
	e.waitPhase("rdy", "ready", time.Minute)
	e.waitPhase("done", "deployed", time.Minute)
	e.waitStatus("broken", time.Minute, "out of attempts", func(st inventory.MachineStatus) bool { return st.Phase == "failed-commissioning" && st.Attempts == 3 })
	select {
	case <-held:
	case <-time.After(time.Minute):
		t.Fatal("dep did not reach its agent's deploy")
	}
	// Stop writers, so the snapshot and the live keys can be compared: the
	// region has stopped once it has resigned.
	e.stop()
	kilntest.Eventually(t, 30*time.Second, "the region to resign", func() bool {
		resp, err := e.cli.Get(context.Background(), e.store.Keys().Elections(), clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count == 0
	})
	before := allKeys(t, e.cli)

	file := filepath.Join(t.TempDir(), "kiln.db")
	st, err := etcd.Backup(context.Background(), e.cli, file)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := etcd.Backup(context.Background(), e.cli, file); err == nil {
		t.Error("a second backup overwrote the first")
	}
	peer, client := "http://"+etcdtest.FreeAddr(t), "http://"+etcdtest.FreeAddr(t)
	dir := filepath.Join(t.TempDir(), "etcd")
	if err := etcd.Restore(etcd.RestoreConfig{Snapshot: file, DataDir: dir, PeerURL: peer, RevisionBump: etcd.DefaultRevisionBump}); err != nil {
		t.Fatal(err)
	}
	if err := etcd.Restore(etcd.RestoreConfig{Snapshot: file, DataDir: dir, PeerURL: peer}); err == nil {
		t.Error("a restore overwrote an existing data folder")
	}
	garbage, garbageDir := filepath.Join(t.TempDir(), "not-a-snapshot"), filepath.Join(t.TempDir(), "etcd")
	if err := os.WriteFile(garbage, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := etcd.Restore(etcd.RestoreConfig{Snapshot: garbage, DataDir: garbageDir}); err == nil || !strings.Contains(err.Error(), "not a readable etcd snapshot") {
		t.Errorf("restoring a file that is no snapshot: %v", err)
	}
	if _, err := os.Stat(garbageDir); err == nil {
		t.Error("a failed restore left a data folder behind")
	}
	cfg := etcd.Config{DataDir: dir, ClientURL: client, PeerURL: peer}
	em, err := etcd.StartEmbedded(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(em.Close)
	cfg.Endpoints = []string{client}
	cli, err := etcd.Connect(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })

	after := allKeys(t, cli)
	for k, v := range before {
		if !bytes.Equal(after[k], v) {
			t.Errorf("%s: restored %q, was %q", k, after[k], v)
		}
	}
	if len(after) != len(before) || len(before) != st.TotalKey {
		t.Errorf("%d keys before, %d in the snapshot's status, %d restored", len(before), st.TotalKey, len(after))
	}
	resp, err := cli.Get(context.Background(), "no-such-key")
	if err != nil {
		t.Fatal(err)
	}
	if resp.Header.Revision < st.Revision+etcd.DefaultRevisionBump {
		t.Errorf("restored revision %d: not bumped past the snapshot's %d", resp.Header.Revision, st.Revision)
	}

	// A region on the restored etcd, with a rack that knows nothing of
	// what happened before.
	e2 := envOn(t, cli, cfg)
	e2.region("region-2", reconciler.Config{})
	// dep's agent, still running on the machine through all this, carries
	// on writing its disk and reports through the restored etcd (its
	// token is in the snapshot).
	var dep inventory.MachineStatus
	if err := json.Unmarshal(after[e.store.Keys().MachineStatus("dep")], &dep); err != nil || dep.Phase != "deploying" || dep.Step != "agent" {
		t.Fatalf("dep restored as %+v (%v), want deploying at its agent", dep, err)
	}
	e2.sim.mu.Lock()
	e2.sim.boot["dep"] = dep.BootTaskID // the deployed OS's token is of that boot
	e2.sim.mu.Unlock()
	go e2.sim.agent(e2.ctx, "r1", "dep", "deploy", dep.BootTaskID)
	e2.waitPhase("dep", "deployed", 2*time.Minute)
	if n := e2.sim.count("dep", "netboot"); n != 0 {
		t.Errorf("dep network-booted %d times after the restore: its deploy was started again", n)
	}
	for m, phase := range map[string]string{"rdy": "ready", "done": "deployed", "broken": "failed-commissioning"} {
		if got := e2.waitPhase(m, phase, time.Minute); got.Phase != phase {
			t.Errorf("%s: %s after the restore, was %s", m, got.Phase, phase)
		}
	}
	for m, purpose := range map[string]string{"rdy": "commission", "done": "deploy", "broken": "commission"} {
		if n := e2.sim.booted(m, purpose); n != 0 {
			t.Errorf("%s booted to %s %d times after the restore: finished work was done again", m, purpose, n)
		}
	}
	t.Logf("dep after the restore: %d deploy boot(s), events %+v", e2.sim.booted("dep", "deploy"), e2.events("dep"))
}

func allKeys(t *testing.T, cli *clientv3.Client) map[string][]byte {
	t.Helper()
	resp, err := cli.Get(context.Background(), "", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, kv := range resp.Kvs {
		out[string(kv.Key)] = kv.Value
	}
	return out
}
