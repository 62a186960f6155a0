package deploy_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// The systemd units pass `systemd-analyze verify`, score below the
// issue's targets in `systemd-analyze security --offline=yes` (region 4.7
// and rack 5.1 before the hardening), and name only flags kiln has.
func TestSystemdUnits(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("systemd-analyze not found")
		}
		t.Skip("systemd-analyze not installed")
	}
	dir := t.TempDir()
	kiln := filepath.Join(dir, "kiln")
	build := exec.Command("go", "build", "-o", kiln, "../../cmd/kiln")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	flags := kilnFlags(t)
	units := []struct {
		file, instance, cmd string
		max                 float64
	}{
		{"kiln-server.service", "kiln-server.service", "server", 2.0},
		{"kiln-rack@.service", "kiln-rack@r1.service", "rack", 2.5},
	}
	var paths []string
	for _, u := range units {
		b, err := os.ReadFile(filepath.Join("systemd", u.file))
		if err != nil {
			t.Fatal(err)
		}
		unit := string(b)
		checkExecStart(t, u.file, unit, u.cmd, flags[u.cmd])
		for _, want := range []string{"SystemCallFilter=@system-service", "NoNewPrivileges=yes", "ProtectSystem=strict"} {
			if !strings.Contains(unit, want+"\n") {
				t.Errorf("%s: no %s", u.file, want)
			}
		}
		p := filepath.Join(dir, u.instance)
		if err := os.WriteFile(p, []byte(strings.ReplaceAll(unit, "/usr/local/bin/kiln", kiln)), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	if !strings.Contains(mustRead(t, "systemd/kiln-rack@.service"), "CacheDirectory=kiln/%i\n") {
		t.Error("the rack unit has no CacheDirectory for the image cache")
	}
	if out, err := exec.Command(sa, append([]string{"verify"}, paths...)...).CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	level := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`)
	for i, u := range units {
		out, _ := exec.Command(sa, "security", "--offline=yes", paths[i]).CombinedOutput()
		m := level.FindSubmatch(out)
		if m == nil {
			t.Fatalf("systemd-analyze security %s: no exposure level in\n%s", u.file, out)
		}
		score, _ := strconv.ParseFloat(string(m[1]), 64)
		t.Logf("%s: exposure %.1f (at most %.1f)", u.file, score, u.max)
		if score > u.max {
			t.Errorf("%s: exposure %.1f, want at most %.1f:\n%s", u.file, score, u.max, out)
		}
	}
}

// checkExecStart checks that the unit runs `kiln CMD` with flags kiln has.
func checkExecStart(t *testing.T, file, unit, cmd string, known map[string]bool) {
	t.Helper()
	i := strings.Index(unit, "\nExecStart=")
	if i < 0 {
		t.Fatalf("%s: no ExecStart", file)
	}
	line := unit[i+len("\nExecStart="):]
	var b strings.Builder
	for _, l := range strings.Split(line, "\n") {
		b.WriteString(strings.TrimSuffix(l, "\\") + " ")
		if !strings.HasSuffix(l, "\\") {
			break
		}
	}
	args := strings.Fields(b.String())
	if len(args) < 2 || args[0] != "/usr/local/bin/kiln" || args[1] != cmd {
		t.Fatalf("%s: ExecStart %q, want /usr/local/bin/kiln %s", file, args, cmd)
	}
	for _, a := range args[2:] {
		if name, ok := strings.CutPrefix(a, "--"); ok {
			name, _, _ = strings.Cut(name, "=")
			if !known[name] {
				t.Errorf("%s: kiln %s has no flag --%s", file, cmd, name)
			}
		}
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
