package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The flag checks of kiln image build-ephemeral, before anything is read.
func TestBuildEphemeralArguments(t *testing.T) {
	dir := t.TempDir()
	agent := filepath.Join(dir, "kiln-agent")
	if err := os.WriteFile(agent, []byte("not an ELF"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		args  []string
		epoch string
		code  int
		say   string
	}{
		"no out":          {[]string{"--kernel-deb", "k.deb"}, "", exitUsage, "--out is required"},
		"deb and kernel":  {[]string{"--out", dir, "--kernel-deb", "k.deb", "--kernel", "vmlinuz"}, "", exitUsage, "not both"},
		"no kernel":       {[]string{"--out", dir, "--kernel", "vmlinuz"}, "", exitUsage, "give --kernel-deb, or --kernel and --modules"},
		"both lists":      {[]string{"--out", dir, "--kernel-deb", "k.deb", "--drivers", "a", "--extra-drivers", "b"}, "", exitUsage, "give one"},
		"bad epoch":       {[]string{"--out", dir, "--kernel-deb", "k.deb", "--agent", agent}, "yesterday", exitFail, `SOURCE_DATE_EPOCH="yesterday"`},
		"missing modules": {[]string{"--out", dir, "--kernel", "vmlinuz", "--modules", filepath.Join(dir, "none"), "--agent", agent}, "", exitFail, "kiln image build-ephemeral: "},
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv("SOURCE_DATE_EPOCH", tc.epoch)
			var out, errOut bytes.Buffer
			code := runBuildEphemeral(t.Context(), tc.args, &out, &errOut)
			if code != tc.code || !strings.Contains(errOut.String(), tc.say) {
				t.Errorf("exit %d, want %d; stderr %q, want it to say %q", code, tc.code, errOut.String(), tc.say)
			}
		})
	}
}
