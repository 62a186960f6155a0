package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnhq/kiln/inventory/etcdtest"
	"github.com/kilnhq/kiln/inventory/etcdtest/invtest"
)

// TestMain lets the tests run this binary as kiln itself (the completion
// scripts call kiln __complete).
func TestMain(m *testing.M) {
	if os.Getenv("KILN_TEST_AS_KILN") == "1" {
		os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
	}
	// A config file of the person running the tests must not steer them.
	if os.Getenv("KILN_CONFIG") == "" {
		os.Setenv("KILN_CONFIG", "/nonexistent/kiln-config")
	}
	os.Exit(m.Run())
}

// The bash completion script in a real bash: commands, resources and the
// machine names from etcd.
func TestCompletionInBash(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	cli, _ := etcdtest.Start(t)
	invtest.Apply(t, cli, invtest.Load(t, testInventory))
	dir := t.TempDir()
	self, _ := os.Executable()
	wrapper := "#!/bin/sh\nKILN_TEST_AS_KILN=1 exec " + self + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(dir, "kiln"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	complete := func(words ...string) []string {
		t.Helper()
		script := `source <(kiln completion bash); COMP_WORDS=(` + strings.Join(words, " ") + `); COMP_CWORD=` +
			string(rune('0'+len(words)-1)) + `; _kiln; printf '%s\n' "${COMPREPLY[@]}"`
		cmd := exec.Command(bash, "-c", script)
		cmd.Env = append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"), "KILN_ETCD_ENDPOINTS="+cli.Endpoints()[0], "KILN_SERVER=")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("bash: %v\n%s", err, out)
		}
		return strings.Fields(string(out))
	}
	for _, c := range []struct {
		words []string
		want  string
	}{
		{[]string{"kiln", "ge"}, "get"},
		{[]string{"kiln", "get", "mach"}, "machine machines"},
		{[]string{"kiln", "describe", "machine", "vm"}, "vm-1 vm-2"},
		{[]string{"kiln", "retry", "vm-2"}, "vm-2"},
		{[]string{"kiln", "wait", "machine", "v"}, "vm-1 vm-2"},
		{[]string{"kiln", "completion", "z"}, "zsh"},
		{[]string{"kiln", "power", "c"}, "cycle"},
	} {
		if got := strings.Join(complete(c.words...), " "); got != c.want {
			t.Errorf("%v: %q, want %q", c.words, got, c.want)
		}
	}
}

func TestCompletionScripts(t *testing.T) {
	for _, sh := range []string{"bash", "zsh", "fish"} {
		var out, errOut bytes.Buffer
		if c := run(context.Background(), []string{"completion", sh}, &out, &errOut); c != exitOK || !strings.Contains(out.String(), "kiln __complete") {
			t.Errorf("%s: %d %s", sh, c, out.String())
		}
		if p, err := exec.LookPath(sh); err == nil && sh != "bash" {
			// The shell parses it (zsh -n, fish --no-execute).
			flag := "-n"
			if sh == "fish" {
				flag = "--no-execute"
			}
			f := filepath.Join(t.TempDir(), "c")
			os.WriteFile(f, out.Bytes(), 0o644)
			if b, err := exec.Command(p, flag, f).CombinedOutput(); err != nil {
				t.Errorf("%s rejects its script: %v\n%s", sh, err, b)
			}
		}
	}
	var out, errOut bytes.Buffer
	if c := run(context.Background(), []string{"completion", "tcsh"}, &out, &errOut); c != exitUsage {
		t.Errorf("tcsh: %d", c)
	}
}
