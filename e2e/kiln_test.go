//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kilnhq/kiln/spec/kilntest"
)

var kilnBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kiln-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	kilnBin = filepath.Join(dir, "kiln")
	build := exec.Command("go", "build", "-o", kilnBin, "../cmd/kiln")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build kiln:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// server is a running `kiln server` process.
type server struct {
	t      *testing.T
	cmd    *exec.Cmd
	etcd   string
	http   string
	api    string
	log    *bytes.Buffer
	exited chan error
}

func startServer(t *testing.T, sourceArgs ...string) *server {
	t.Helper()
	s := &server{t: t, etcd: "http://" + freeAddr(t), http: freeAddr(t), api: freeAddr(t), log: &bytes.Buffer{}, exited: make(chan error, 1)}
	args := append([]string{"server", "--data-dir", t.TempDir(),
		"--etcd-listen-client", s.etcd, "--etcd-listen-peer", "http://" + freeAddr(t),
		"--listen", s.http, "--api", s.api}, sourceArgs...)
	s.cmd = exec.Command(kilnBin, args...)
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.exited <- s.cmd.Wait() }()
	t.Cleanup(func() {
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-s.exited:
			if err != nil {
				t.Errorf("kiln server exited with %v after SIGTERM\n%s", err, s.log)
			}
		case <-time.After(30 * time.Second):
			s.cmd.Process.Kill()
			t.Errorf("kiln server did not stop within 30s of SIGTERM\n%s", s.log)
		}
	})
	s.waitFor("the source applied", func() bool {
		out, _, code := s.kiln("get", "source", "-o", "json")
		return code == 0 && strings.Contains(out, `"state": "Applied"`)
	})
	return s
}

// kiln runs the CLI against this server and returns stdout, stderr, exit code.
func (s *server) kiln(args ...string) (string, string, int) {
	s.t.Helper()
	return s.kilnEnv(nil, args...)
}

// kilnEnv is kiln with more environment variables (e.g. etcd credentials).
func (s *server) kilnEnv(env []string, args ...string) (string, string, int) {
	s.t.Helper()
	cmd := exec.Command(kilnBin, args...)
	cmd.Env = append(append(os.Environ(), "KILN_ETCD_ENDPOINTS="+s.etcd), env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		s.t.Fatal(err)
	}
	return out.String(), errOut.String(), code
}

// waitFor re-checks cond whenever the server may have changed something,
// up to a generous deadline. Each check is a full CLI round trip.
func (s *server) waitFor(what string, cond func() bool) {
	s.t.Helper()
	eventually(s.t, 60*time.Second, what, s.log.String, func() bool {
		select {
		case err := <-s.exited:
			s.t.Fatalf("kiln server exited (%v) while waiting for %s", err, what)
		default:
		}
		return cond()
	})
}

// eventually is kilntest.Eventually that, when the wait fails, also logs
// the processes' output.
func eventually(t testing.TB, within time.Duration, what string, output func() string, cond func() bool) time.Duration {
	t.Helper()
	ok := false
	defer func() {
		if !ok {
			t.Logf("output while waiting for %s:\n%s", what, output())
		}
	}()
	took := kilntest.Eventually(t, within, what, cond)
	ok = true
	return took
}

// watchUntil runs `kiln get machines --watch` and returns how long after
// start a line containing all of want appeared.
func (s *server) watchUntil(start func(), want ...string) time.Duration {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, kilnBin, "get", "machines", "--watch")
	cmd.Env = append(os.Environ(), "KILN_ETCD_ENDPOINTS="+s.etcd)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		s.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	defer cmd.Wait()
	defer cancel()
	sc := bufio.NewScanner(stdout)
	// The first table is the state before the change.
	sc.Scan() // header
	var t0 time.Time
	started := false
	for sc.Scan() {
		line := sc.Text()
		if !started {
			// Rows of the initial table arrive at once; start the change
			// after the first row, when the watch is being set up.
			started, t0 = true, time.Now()
			start()
			continue
		}
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(line, w)
		}
		if ok {
			return time.Since(t0)
		}
	}
	s.t.Fatalf("watch ended without a line containing %q\n%s", want, s.log)
	return 0
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	out, err := exec.Command("cp", "-r", from, to).CombinedOutput()
	if err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
}

func editorWrite(t *testing.T, path string, edit func(string) string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	tmp := path + ".tmp~"
	if err := os.WriteFile(tmp, []byte(edit(string(b))), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestValidate(t *testing.T) {
	s := &server{t: t}
	for _, ex := range []string{"../examples/lab", "../examples/datacenter"} {
		out, errOut, code := s.kiln("validate", ex)
		if code != 0 {
			t.Fatalf("kiln validate %s: exit %d\n%s%s", ex, code, out, errOut)
		}
	}
	broken := filepath.Join(t.TempDir(), "lab")
	copyTree(t, "../examples/lab", broken)
	editorWrite(t, filepath.Join(broken, "machines.yaml"), func(s string) string {
		s = strings.Replace(s, `mac: "52:54:00:42:00:02"`, `mac: "52:54:00:42:00:01"`, 1) // duplicate MAC
		s = strings.Replace(s, "ip: 10.42.0.13", "ip: 10.43.0.13", 1)                     // outside the subnet
		return strings.Replace(s, "state: ready", "state: commissioning", 1)              // not a desired state
	})
	editorWrite(t, filepath.Join(broken, "images.yaml"), func(s string) string {
		return strings.Replace(s, "sha256: 9a8b7c6d5e4f30211203f4e5d6c7b8a99a8b7c6d5e4f30211203f4e5d6c7b8a9\n", "\n", 1)
	})
	out, _, code := s.kiln("validate", broken)
	if code != 1 {
		t.Fatalf("broken copy: exit %d, want 1\n%s", code, out)
	}
	for _, want := range []string{
		"machines.yaml:22:", "already used by machine \"vm-1\"",
		"machines.yaml:35:", "outside subnet",
		"is not one of ready, deployed",
		"images.yaml:", "sha256: missing",
		"4 errors",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("kiln validate output lacks %q:\n%s", want, out)
		}
	}
	gh, _, _ := s.kiln("validate", "-o", "github", broken)
	if !strings.Contains(gh, "::error file=machines.yaml,line=22,col=") {
		t.Errorf("github annotations: %s", gh)
	}
}

func TestServerWatchedDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "lab")
	copyTree(t, "../examples/lab", dir)
	s := startServer(t, "--source", dir)

	out, _, _ := s.kiln("get", "machines")
	if !strings.Contains(out, "vm-2") || !strings.Contains(out, "ready") {
		t.Fatalf("get machines:\n%s", out)
	}
	took := s.watchUntil(func() {
		editorWrite(t, filepath.Join(dir, "machines.yaml"), func(s string) string {
			return strings.Replace(s, "name: vm-2\n  labels: {class: lab-vm}\nspec:\n  state: ready", "name: vm-2\n  labels: {class: lab-vm}\nspec:\n  state: deployed", 1)
		})
	}, "vm-2", "deployed")
	t.Logf("an edit in the watched folder reached `kiln get machines --watch` in %s", took)

	// A bad edit: rejected whole, visible in get source, last good stays.
	editorWrite(t, filepath.Join(dir, "machines.yaml"), func(s string) string {
		return strings.Replace(s, "subnet: lab-net, ip: 10.42.0.13", "subnet: lab-nett, ip: 10.42.0.13", 1)
	})
	s.waitFor("the bad revision to be rejected", func() bool {
		out, _, _ := s.kiln("get", "source")
		return strings.Contains(out, "Invalid")
	})
	out, _, _ = s.kiln("get", "source", "-o", "yaml")
	if !strings.Contains(out, `subnet "lab-nett" not found`) || !strings.Contains(out, "machines.yaml") {
		t.Fatalf("get source -o yaml should show the problem:\n%s", out)
	}
	out, _, _ = s.kiln("get", "machines", "vm-2")
	if !strings.Contains(out, "deployed") {
		t.Fatalf("last good revision should stay applied:\n%s", out)
	}
	resp, err := http.Get("http://" + s.http + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	var metrics bytes.Buffer
	metrics.ReadFrom(resp.Body)
	resp.Body.Close()
	if !strings.Contains(metrics.String(), `kiln_source_last_apply_success{source="default"} 0`) ||
		!strings.Contains(metrics.String(), `kiln_source_apply_total{result="invalid",source="default"} 1`) ||
		strings.Contains(metrics.String(), `kiln_source_problems{severity="error",source="default"} 0`) {
		t.Fatalf("metrics should show the rejected revision:\n%s", grep(metrics.String(), "kiln_source"))
	}

	// diff against the running server flags what touches disks.
	next := filepath.Join(t.TempDir(), "next")
	copyTree(t, dir, next)
	editorWrite(t, filepath.Join(next, "machines.yaml"), func(s string) string {
		s = strings.Replace(s, "lab-nett", "lab-net", 1)
		return strings.Replace(s, "name: vm-1\n  labels: {class: lab-vm}\nspec:\n  state: deployed", "name: vm-1\n  labels: {class: lab-vm}\nspec:\n  state: ready", 1)
	})
	out, _, code := s.kiln("diff", next)
	if code != 1 || !strings.Contains(out, "~ Machine vm-1") || !strings.Contains(out, "! releases the machine and erases its disks") {
		t.Fatalf("kiln diff: exit %d\n%s", code, out)
	}

	// Fix, then remove vm-3: it becomes unmanaged and says so.
	editorWrite(t, filepath.Join(dir, "machines.yaml"), func(s string) string {
		s = strings.Replace(s, "lab-nett", "lab-net", 1)
		i := strings.Index(s, "---\napiVersion: kiln.dev/v1alpha1\nkind: Machine\nmetadata:\n  name: vm-3")
		return s[:i]
	})
	editorWrite(t, filepath.Join(dir, "rack.yaml"), func(s string) string {
		return strings.Replace(s, "        - {name: swp3, machine: vm-3, interface: eno1}\n", "", 1)
	})
	s.waitFor("vm-3 to become unmanaged", func() bool {
		out, _, _ := s.kiln("get", "machines")
		return strings.Contains(out, "vm-3") && strings.Contains(out, "unmanaged")
	})
	out, _, _ = s.kiln("describe", "machine", "vm-3")
	if !strings.Contains(out, "nothing was powered off or wiped") {
		t.Fatalf("describe unmanaged machine:\n%s", out)
	}
	var list struct{ Items []map[string]any }
	out, _, _ = s.kiln("get", "machines", "-o", "json")
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Items) != 3 {
		t.Fatalf("get machines -o json: %v\n%s", err, out)
	}
}

func TestServerGitRepository(t *testing.T) {
	repo := t.TempDir()
	git := func(args ...string) {
		t.Helper()
		cmd := exec.Command("git", args...)
		cmd.Dir = repo
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=ops", "GIT_AUTHOR_EMAIL=ops@example.invalid",
			"GIT_COMMITTER_NAME=ops", "GIT_COMMITTER_EMAIL=ops@example.invalid", "GIT_CONFIG_GLOBAL=/dev/null")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	git("init", "-q", "-b", "main")
	copyTree(t, "../examples/lab", filepath.Join(repo, "fleet"))
	git("add", ".")
	git("commit", "-q", "-m", "lab")
	s := startServer(t, "--git", repo, "--git-path", "fleet", "--git-interval", "1h")
	// The sync trigger is the region API's, an operator's.
	out, errOut, code := s.kiln("token", "create", "--name", "git-hook", "--role", "operator")
	if code != 0 {
		t.Fatalf("kiln token create: %d %s", code, errOut)
	}
	token := strings.TrimSpace(out)
	req, _ := http.NewRequest("POST", "http://"+s.api+"/api/v1/sources/default/sync", nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("the sync trigger without a token: %v %v", err, resp)
	}
	if resp, err := http.Post("http://"+s.http+"/api/v1/sources/default/sync", "", nil); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("the old unauthenticated trigger on --listen: %v %v", err, resp)
	}

	took := s.watchUntil(func() {
		editorWrite(t, filepath.Join(repo, "fleet", "machines.yaml"), func(s string) string {
			return strings.Replace(s, "name: vm-2\n  labels: {class: lab-vm}\nspec:\n  state: ready", "name: vm-2\n  labels: {class: lab-vm}\nspec:\n  state: deployed", 1)
		})
		git("commit", "-q", "-am", "deploy vm-2")
		req, _ := http.NewRequest("POST", "http://"+s.api+"/api/v1/sources/default/sync", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != http.StatusAccepted {
			t.Errorf("sync trigger: %v %v", err, resp)
		}
	}, "vm-2", "deployed")
	t.Logf("a commit plus a sync trigger reached `kiln get machines --watch` in %s", took)
	out, _, _ = s.kiln("get", "source")
	if !strings.Contains(out, "git") || !strings.Contains(out, "Applied") {
		t.Fatalf("get source:\n%s", out)
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
