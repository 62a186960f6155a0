package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnhq/kiln/inventory/etcdtest"
	"github.com/kilnhq/kiln/inventory/etcdtest/invtest"
)

// kiln etcd init-roles against a real etcd: racks come from the applied
// desired state and --rack, auth is enabled, a second run (now as root)
// changes nothing but passwords, and no password is ever printed.
func TestEtcdInitRoles(t *testing.T) {
	cli, cfg := etcdtest.Start(t)
	ctx := context.Background()
	inv := loadTestInventory(t)
	invtest.Apply(t, cli, inv)
	dir := t.TempDir()
	const rootPW = "s3cret-root-password"
	os.WriteFile(filepath.Join(dir, "root"), []byte(rootPW+"\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "kiln-rack-extra"), []byte("s3cret-rack-password"), 0o600)
	kiln := func(args ...string) string {
		t.Helper()
		var out, errOut bytes.Buffer
		if code := run(ctx, append(args, "--etcd-endpoints", cfg.ClientURL), &out, &errOut); code != exitOK {
			t.Fatalf("kiln %s: exit %d\n%s%s", strings.Join(args, " "), code, out.String(), errOut.String())
		}
		if strings.Contains(out.String()+errOut.String(), "s3cret") {
			t.Fatalf("a password was printed:\n%s%s", out.String(), errOut.String())
		}
		return out.String()
	}
	// Enabling auth with neither a root password nor a root certificate
	// would lock everyone out: refused.
	var o, e bytes.Buffer
	if code := run(ctx, []string{"etcd", "init-roles", "--enable-auth", "--etcd-endpoints", cfg.ClientURL}, &o, &e); code != exitUsage || !strings.Contains(e.String(), "would lock etcd") {
		t.Fatalf("enable-auth without root credentials: exit %d\n%s%s", code, o.String(), e.String())
	}
	out := kiln("etcd", "init-roles", "--rack", "extra", "--password-dir", dir, "--enable-auth")
	for r := range inv.Racks {
		if !strings.Contains(out, "created user kiln-rack-"+r+" (client certificate only)") {
			t.Errorf("no user for rack %s of the desired state:\n%s", r, out)
		}
	}
	for _, want := range []string{"created user kiln-rack-extra (password)", "created user root (password)", "enabled authentication"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in\n%s", want, out)
		}
	}
	// Auth is on: without credentials the command is refused, as root
	// it runs again and only sets the passwords.
	o.Reset()
	e.Reset()
	if code := run(ctx, []string{"etcd", "init-roles", "--etcd-endpoints", cfg.ClientURL}, &o, &e); code == exitOK {
		t.Fatalf("init-roles without credentials after --enable-auth succeeded:\n%s", o.String())
	}
	out = kiln("etcd", "init-roles", "--rack", "extra", "--password-dir", dir, "--enable-auth",
		"--etcd-user", "root", "--etcd-password-file", filepath.Join(dir, "root"))
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if !strings.HasPrefix(l, "set password of user ") && !strings.HasPrefix(l, "roles up to date:") {
			t.Errorf("second run did %q", l)
		}
	}
}

// kiln server refuses to serve embedded etcd beyond loopback without TLS
// (before anything listens: 10.1.2.3 is no address of this host).
func TestServerRefusesPlainEtcdOnTheNetwork(t *testing.T) {
	var out, errOut bytes.Buffer
	code := run(context.Background(), []string{"server", "--source", t.TempDir(), "--data-dir", t.TempDir(),
		"--etcd-listen-client", "http://10.1.2.3:2379", "--listen", "127.0.0.1:0"}, &out, &errOut)
	if code != exitFail || !strings.Contains(errOut.String(), "refusing to serve client URL http://10.1.2.3:2379 without TLS") {
		t.Fatalf("exit %d, want a refusal:\n%s", code, errOut.String())
	}
}
