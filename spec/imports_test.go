package spec_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportRules checks the one-way imports docs/architecture.md states,
// on the non-test imports of every package in the module.
func TestImportRules(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH")
	}
	const mod = "github.com/kilnhq/kiln/"
	out, err := exec.Command(goBin, "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, mod+"...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	// The first rule whose from holds the package applies: it never
	// imports a package under any of never ("" is everything of ours).
	rules := []struct {
		from  string
		never []string
	}{
		{"spec/agentapi", []string{"agents", "cmd", "e2e", "inventory", "netboot", "power", "reconciler", "spec/"}},
		{"spec", []string{""}},
		{"inventory", []string{"agents", "cmd", "e2e", "netboot", "power", "reconciler"}},
		{"netboot", []string{"agents", "cmd", "e2e", "reconciler"}},
		{"power", []string{"agents", "cmd", "e2e", "reconciler"}},
		{"reconciler", []string{"agents", "cmd", "e2e"}},
		{"agents", []string{"cmd", "e2e", "reconciler"}},
		{"cmd", []string{"cmd", "e2e"}},
	}
	under := func(pkg, dir string) bool {
		return dir == "" || pkg == dir || strings.HasPrefix(pkg, strings.TrimSuffix(dir, "/")+"/")
	}
	checked := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		pkg := strings.TrimPrefix(fields[0], mod)
		for _, r := range rules {
			if !under(pkg, r.from) {
				continue
			}
			for _, imp := range fields[1:] {
				dep, ours := strings.CutPrefix(imp, mod)
				if !ours {
					continue
				}
				checked++
				for _, n := range r.never {
					if under(dep, n) {
						t.Errorf("%s imports %s, but %s never imports %s (docs/architecture.md)", pkg, dep, r.from, orOurs(n))
					}
				}
			}
			break
		}
	}
	if checked == 0 {
		t.Fatal("go list reported no imports of ours: the check checked nothing")
	}
}

func orOurs(n string) string {
	if n == "" {
		return "anything of ours"
	}
	return n
}
