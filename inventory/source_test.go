package inventory

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory/etcdtest"
	"github.com/kilnhq/kiln/spec"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// harness runs a Syncer for a source and hands each handled revision's
// status to the test.
type harness struct {
	t        *testing.T
	store    *Store
	metrics  *SyncMetrics
	reg      *prometheus.Registry
	statuses chan SourceStatus
}

func startSync(t *testing.T, src Source) *harness {
	t.Helper()
	cli, _ := etcdtest.Start(t)
	reg := prometheus.NewRegistry()
	h := &harness{t: t, store: NewStore(cli, "", quiet()), reg: reg, statuses: make(chan SourceStatus, 100)}
	h.metrics = NewSyncMetrics(reg)
	y := NewSyncer(src, h.store, h.metrics, quiet())
	y.OnApplied = func(s SourceStatus) { h.statuses <- s }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- y.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("syncer: %v", err)
		}
	})
	return h
}

// next waits for a handled revision whose state is want.
func (h *harness) next(want string) SourceStatus {
	h.t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case s := <-h.statuses:
			if s.State == want {
				return s
			}
			h.t.Logf("source state %s (%s), waiting for %s", s.State, s.Message, want)
		case <-deadline:
			h.t.Fatalf("no %s revision within 30s", want)
		}
	}
}

func (h *harness) machines() map[string]*spec.Machine {
	h.t.Helper()
	snap, err := h.store.Snapshot(context.Background(), spec.KindMachine)
	if err != nil {
		h.t.Fatal(err)
	}
	return snap.Inventory.Machines
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(to, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// editorWrite replaces a file the way editors do: write a temporary file
// beside it, then rename it over the original.
func editorWrite(t *testing.T, path string, edit func(string) string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".swp")
	if err := os.WriteFile(tmp, []byte(edit(string(b))), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestDirSource(t *testing.T) {
	dir := t.TempDir()
	copyTree(t, "../examples/lab", dir)
	h := startSync(t, &Dir{Name: "lab", Path: dir, Log: quiet(), Debounce: 50 * time.Millisecond})
	first := h.next(SourceApplied)
	if got := len(h.machines()); got != 3 {
		t.Fatalf("%d machines applied, want 3", got)
	}

	// An editor-style save is picked up.
	editorWrite(t, filepath.Join(dir, "machines.yaml"), func(s string) string {
		return strings.Replace(s, "state: ready", "state: deployed", 1)
	})
	second := h.next(SourceApplied)
	if second.AppliedRevision == first.AppliedRevision {
		t.Fatal("revision did not change")
	}
	if h.machines()["vm-2"].Spec.State != spec.StateDeployed {
		t.Fatal("edit not applied")
	}

	// A broken edit is rejected whole; the last good revision stays.
	editorWrite(t, filepath.Join(dir, "machines.yaml"), func(s string) string {
		s = strings.Replace(s, "name: vm-3", "name: vm-1", 1)           // duplicate name
		return strings.Replace(s, "ip: 10.42.0.13", "ip: 10.99.0.1", 1) // outside the subnet
	})
	bad := h.next(SourceInvalid)
	if bad.Errors < 2 || bad.AppliedRevision != second.AppliedRevision {
		t.Fatalf("invalid revision status: %+v", bad)
	}
	if h.machines()["vm-3"] == nil {
		t.Fatal("the invalid revision was partly applied")
	}
	if v := testutil.ToFloat64(h.metrics.lastSuccess.WithLabelValues("lab")); v != 0 {
		t.Fatalf("kiln_source_last_apply_success = %v after a rejected revision", v)
	}
	st, err := GetJSON[SourceStatus](context.Background(), h.store, h.store.Keys().Source("lab"))
	if err != nil || st.State != SourceInvalid || len(st.Problems) < 2 || st.Problems[0].Pos.Line == 0 {
		t.Fatalf("stored source status should show the problems with positions: %+v %v", st, err)
	}

	// Fixing it, and a machine in a new sub-folder, apply again.
	editorWrite(t, filepath.Join(dir, "machines.yaml"), func(s string) string {
		s = strings.Replace(s, "name: vm-1\n  labels: {class: lab-vm}\nspec:\n  firmware: uefi", "name: vm-3\n  labels: {class: lab-vm}\nspec:\n  firmware: uefi", 1)
		return strings.Replace(s, "ip: 10.99.0.1", "ip: 10.42.0.13", 1)
	})
	h.next(SourceApplied)
	if err := os.MkdirAll(filepath.Join(dir, "more"), 0o755); err != nil {
		t.Fatal(err)
	}
	h.next(SourceApplied) // the empty folder is a (no-op) revision
	doc := "apiVersion: kiln.dev/v1alpha1\nkind: Machine\nmetadata: {name: vm-4}\nspec:\n  interfaces: [{name: eno1, mac: \"52:54:00:42:00:04\", subnet: lab-net}]\n  bmc: {driver: manual}\n"
	if err := os.WriteFile(filepath.Join(dir, "more", "vm-4.yaml"), []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	for h.machines()["vm-4"] == nil {
		h.next(SourceApplied)
	}

	// Removing a machine leaves it unmanaged, not wiped.
	if err := os.Remove(filepath.Join(dir, "more", "vm-4.yaml")); err != nil {
		t.Fatal(err)
	}
	h.next(SourceApplied)
	snap, err := h.store.Snapshot(context.Background(), KindUnmanaged)
	if err != nil || snap.Unmanaged["vm-4"].Name != "vm-4" {
		t.Fatalf("vm-4 should be unmanaged: %+v %v", snap, err)
	}
}

func TestDirSourceMissingRoot(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "later")
	h := startSync(t, &Dir{Name: "lab", Path: dir, Log: quiet(), Retry: 50 * time.Millisecond})
	st := h.next(SourceUnreachable)
	if !strings.Contains(st.Message, "later") {
		t.Fatalf("message should name the folder: %q", st.Message)
	}
	copyTree(t, "../examples/lab", dir)
	h.next(SourceApplied)
}

// gitCmd runs the git command line in dir, the way a person commits.
func gitCmd(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.invalid",
		"GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.invalid", "GIT_CONFIG_GLOBAL=/dev/null")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func gitRepo(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git is not installed (.ci/run installs it)")
	}
	dir := t.TempDir()
	gitCmd(t, dir, "init", "-q", "-b", "main")
	copyTree(t, "../examples/lab", filepath.Join(dir, "inventory"))
	gitCmd(t, dir, "add", ".")
	gitCmd(t, dir, "commit", "-q", "-m", "lab")
	return dir
}

func TestGitSourceLocal(t *testing.T) {
	repo := gitRepo(t)
	g := NewGit("git", repo, "main", quiet())
	g.Path = "inventory"
	h := startSync(t, g)
	st := h.next(SourceApplied)
	if head := gitCmd(t, repo, "rev-parse", "HEAD"); st.AppliedRevision != head {
		t.Fatalf("applied %s, want commit %s", st.AppliedRevision, head)
	}

	// A bad commit is rejected; the good one stays applied.
	path := filepath.Join(repo, "inventory", "machines.yaml")
	editorWrite(t, path, func(s string) string { return strings.Replace(s, "ip: 10.42.0.13", "ip: 10.42.0.11", 1) })
	gitCmd(t, repo, "commit", "-q", "-am", "oops: duplicate IP")
	g.Sync()
	bad := h.next(SourceInvalid)
	if bad.AppliedRevision != st.AppliedRevision || !strings.Contains(bad.Problems[0].Message, "already used by machine") {
		t.Fatalf("bad commit status: %+v", bad)
	}

	// The fixing commit applies.
	editorWrite(t, path, func(s string) string {
		s = strings.Replace(s, "ip: 10.42.0.11}\n    - {name: eno2", "ip: 10.42.0.13}\n    - {name: eno2", 1)
		return strings.Replace(s, "state: ready", "state: deployed", 1)
	})
	gitCmd(t, repo, "commit", "-q", "-am", "fix")
	g.Sync()
	fixed := h.next(SourceApplied)
	if fixed.AppliedRevision != gitCmd(t, repo, "rev-parse", "HEAD") || h.machines()["vm-2"].Spec.State != spec.StateDeployed {
		t.Fatalf("fix not applied: %+v", fixed)
	}
}

func TestGitSourceRemoteFollowsForcePush(t *testing.T) {
	work := gitRepo(t)
	remote := filepath.Join(t.TempDir(), "remote.git")
	gitCmd(t, work, "clone", "-q", "--bare", work, remote)
	g := NewGit("git", "file://"+remote, "main", quiet())
	g.Path, g.CacheDir = "inventory", t.TempDir()
	h := startSync(t, g)
	first := h.next(SourceApplied)

	editorWrite(t, filepath.Join(work, "inventory", "machines.yaml"), func(s string) string {
		return strings.Replace(s, "state: ready", "state: deployed", 1)
	})
	gitCmd(t, work, "commit", "-q", "-am", "deploy vm-2")
	gitCmd(t, work, "push", "-q", remote, "main")
	g.Sync()
	second := h.next(SourceApplied)
	if second.AppliedRevision == first.AppliedRevision {
		t.Fatal("push not followed")
	}

	// Rewrite history: the remote branch goes back to an unrelated commit.
	gitCmd(t, work, "checkout", "-q", "--orphan", "rewrite")
	editorWrite(t, filepath.Join(work, "inventory", "machines.yaml"), func(s string) string {
		return strings.Replace(s, "zone: lab", "zone: lab", 1) + "\n# rewritten\n"
	})
	gitCmd(t, work, "commit", "-q", "-am", "rewritten history")
	gitCmd(t, work, "push", "-q", "-f", remote, "rewrite:main")
	g.Sync()
	third := h.next(SourceApplied)
	if !strings.Contains(third.Message, "force push") {
		t.Fatalf("force push not reported: %q", third.Message)
	}

	// An unreachable remote keeps the last good revision.
	if err := os.RemoveAll(remote); err != nil {
		t.Fatal(err)
	}
	g.Sync()
	down := h.next(SourceUnreachable)
	if down.AppliedRevision != third.AppliedRevision {
		t.Fatalf("unreachable remote changed what is applied: %+v", down)
	}
}
