package initramfs

import (
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory/pki"
)

// initramfsEntries reads the built initramfs back: gunzip, then cpio.
func initramfsEntries(t *testing.T, out string) map[string]Entry {
	t.Helper()
	f, err := os.Open(filepath.Join(out, InitrdFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	ents, err := ReadCPIO(zr)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]Entry{}
	for _, e := range ents {
		m[e.Name] = e
	}
	return m
}

// TestBuildWithCA: --ca puts the CA at /etc/kiln/ca.pem (where the agent
// looks, machine.CAPath); without it there is no such file (the agent
// talks plain http); a file that is not a CA certificate is refused.
func TestBuildWithCA(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := pki.Init(dir, "", time.Now()); err != nil {
		t.Fatal(err)
	}
	caPath := filepath.Join(dir, pki.CAFile)
	ca, _ := os.ReadFile(caPath)

	out := t.TempDir()
	buildFixture(t, out, Options{CA: caPath})
	e, ok := initramfsEntries(t, out)["etc/kiln/ca.pem"]
	if !ok || !bytes.Equal(e.Data, ca) || e.Mode != modeFile|0o644 {
		t.Errorf("etc/kiln/ca.pem: present %v, mode %o, %d bytes (want the CA's %d)", ok, e.Mode, len(e.Data), len(ca))
	}

	plain := t.TempDir()
	buildFixture(t, plain, Options{})
	if _, ok := initramfsEntries(t, plain)[CAFile]; ok {
		t.Error("an image built without --ca carries a CA")
	}

	loaded, _ := pki.Load(dir)
	leaf, _, err := loaded.Issue(dir, pki.IssueOptions{Name: "rack", Hosts: []string{"10.42.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	junk := filepath.Join(dir, "junk.pem")
	os.WriteFile(junk, []byte("hello"), 0o644)
	agent := filepath.Join(t.TempDir(), "kiln-agent")
	os.WriteFile(agent, staticAgent(t), 0o755)
	for _, c := range []struct{ ca, err string }{
		{leaf, "not a CA certificate"},
		{junk, "holds no PEM certificate"},
		{filepath.Join(dir, "absent.pem"), "no such file"},
	} {
		o := Options{Agent: agent, Kernel: "testdata/boot/vmlinuz-6.1.0-test", Modules: fixture, Out: t.TempDir(), Name: "e", CA: c.ca}
		if _, err := Build(o); err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("CA %s: err = %v, want %q", c.ca, err, c.err)
		}
	}
}
