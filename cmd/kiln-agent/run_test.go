package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/agents/machine"
	"github.com/kilnhq/kiln/agents/machine/facts"
	"github.com/kilnhq/kiln/agents/machine/racktest"
	"github.com/kilnhq/kiln/inventory/pki"
	"github.com/kilnhq/kiln/spec/agentapi"
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestRunArguments(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		args []string
		code int
		say  string
	}{
		"version":      {[]string{"-version"}, 0, "kiln-agent dev"},
		"bad flag":     {[]string{"-nope"}, 2, "flag provided but not defined"},
		"missing args": {[]string{"-cmdline", "console=ttyS0 kiln.url=http://10.0.0.1:8080"}, 2, "kiln.machine is missing\nkiln.token is missing"},
		"bad url":      {[]string{"-cmdline", "kiln.url=ftp://x kiln.machine=a kiln.token=t"}, 2, `kiln.url="ftp://x" is not an http(s) URL`},
		"bad after":    {[]string{"-cmdline", "kiln.url=http://x kiln.machine=a kiln.token=t kiln.after=halt"}, 2, `kiln.after="halt"`},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var out bytes.Buffer
			if code := run(context.Background(), tc.args, &out); code != tc.code || !strings.Contains(out.String(), tc.say) {
				t.Errorf("run %v = %d, output %q; want %d saying %q", tc.args, code, out.String(), tc.code, tc.say)
			}
		})
	}
}

// TestAgentMainCommission runs the agent as main wires it (real
// collectors over the fixture tree, real client) against the real boot
// server, without the network bring-up.
func TestAgentMainCommission(t *testing.T) {
	t.Parallel()
	rack := racktest.New(t, discard())
	rack.OffAfterCommissioning()
	cfg, err := machine.ParseCmdline("console=ttyS0 kiln.url=" + rack.Server.URL + " kiln.machine=vm-2 kiln.purpose=commission kiln.lldp=1ms kiln.token=" + racktest.Token)
	if err != nil {
		t.Fatal(err)
	}
	roots := facts.Roots{Sys: "../../agents/machine/facts/testdata/sys", Proc: "../../agents/machine/facts/testdata/proc", Dev: "../../agents/machine/facts/testdata/dev"}
	var console, logs bytes.Buffer
	opts := options{roots: roots}
	if err := agentMain(context.Background(), cfg, opts, slog.New(slog.NewTextHandler(&logs, nil)), &console); err != nil {
		t.Fatalf("%v\n%s", err, logs.String())
	}
	if !strings.Contains(console.String(), "kiln-agent: facts reported\n") || !strings.Contains(console.String(), "kiln-agent: result success\n") {
		t.Errorf("console:\n%s", console.String())
	}
	if strings.Contains(logs.String(), racktest.Token) {
		t.Error("the token is in the log")
	}
	reps := rack.Reports()
	if len(reps) != 2 || reps[0].Facts == nil {
		t.Fatalf("reports = %+v", reps)
	}
	var f agentapi.Facts
	if err := json.Unmarshal(reps[0].Facts, &f); err != nil {
		t.Fatal(err)
	}
	if f.DMI.UUID != "6a1f9c2e-58d1-4b5e-9d1c-2f0e4a7b9c11" || len(f.Disks) != 3 {
		t.Errorf("facts = %+v", f)
	}
	if rs := rack.Results(); len(rs) != 1 || !rs[0].Success {
		t.Errorf("results = %+v", rs)
	}
}

func TestLoadModules(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	list := filepath.Join(dir, "modules")
	err := os.WriteFile(list, []byte("# NICs\nkernel/drivers/net/virtio_net.ko\n\nkernel/drivers/net/ethernet/intel/e1000/e1000.ko.xz\nkernel/drivers/block/missing.ko\nkernel/drivers/nvme/host/nvme.ko\n"), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	var tried []string
	load := func(p string) error {
		tried = append(tried, p)
		if strings.HasSuffix(p, "missing.ko") {
			return errors.New("no such file")
		}
		return nil
	}
	if n := loadModules(discard(), list, "/lib/modules/6.1.0-kiln", load); n != 3 {
		t.Errorf("loaded %d, want 3", n)
	}
	want := []string{
		"/lib/modules/6.1.0-kiln/kernel/drivers/net/virtio_net.ko",
		"/lib/modules/6.1.0-kiln/kernel/drivers/net/ethernet/intel/e1000/e1000.ko.xz",
		"/lib/modules/6.1.0-kiln/kernel/drivers/block/missing.ko",
		"/lib/modules/6.1.0-kiln/kernel/drivers/nvme/host/nvme.ko",
	}
	if strings.Join(tried, "\n") != strings.Join(want, "\n") {
		t.Errorf("tried:\n%s", strings.Join(tried, "\n"))
	}
	if n := loadModules(discard(), filepath.Join(dir, "none"), "/lib/modules/x", load); n != 0 {
		t.Errorf("no list: loaded %d", n)
	}
}

// TestLoadModuleMissing: a module file that is not there is an error,
// logged by loadModules, which goes on.
func TestLoadModuleMissing(t *testing.T) {
	t.Parallel()
	err := loadModule(filepath.Join(t.TempDir(), "absent.ko"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("err = %v", err)
	}
}

// TestAgentMainTLS: with a CA file (as /etc/kiln/ca.pem in the image) the
// agent commissions over https verified against it, refuses an http
// kiln.url (it would hand its token to whoever answers), and refuses a CA
// file that holds no certificate; without one it warns that the channel
// is unauthenticated.
func TestAgentMainTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := pki.Init(dir, "", time.Now()); err != nil {
		t.Fatal(err)
	}
	ca, _ := pki.Load(dir)
	certPath, keyPath, err := ca.Issue(dir, pki.IssueOptions{Name: "rack", Hosts: []string{"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	roots := facts.Roots{Sys: "../../agents/machine/facts/testdata/sys", Proc: "../../agents/machine/facts/testdata/proc", Dev: "../../agents/machine/facts/testdata/dev"}
	runWith := func(url, caPath string) (string, error) {
		cfg, err := machine.ParseCmdline("kiln.url=" + url + " kiln.machine=vm-2 kiln.lldp=0 kiln.token=" + racktest.Token)
		if err != nil {
			t.Fatal(err)
		}
		var console, logs bytes.Buffer
		err = agentMain(context.Background(), cfg, options{roots: roots, caPath: caPath}, slog.New(slog.NewTextHandler(&logs, nil)), &console)
		return console.String() + logs.String(), err
	}
	caFile := filepath.Join(dir, pki.CAFile)

	rack := racktest.NewTLS(t, discard(), cert)
	rack.OffAfterCommissioning()
	if out, err := runWith(rack.Server.URL, caFile); err != nil || !strings.Contains(out, "over https") {
		t.Fatalf("over TLS: %v\n%s", err, out)
	}
	if rs := rack.Results(); len(rs) != 1 || !rs[0].Success {
		t.Errorf("results = %+v", rs)
	}

	plain := racktest.New(t, discard())
	plain.OffAfterCommissioning()
	if out, err := runWith(plain.Server.URL, caFile); !errors.Is(err, machine.ErrDowngrade) || !strings.Contains(out, "result failure") {
		t.Errorf("http kiln.url with a CA: %v\n%s", err, out)
	}
	if n := len(plain.Reports()); n != 0 {
		t.Errorf("the http rack got %d reports", n)
	}
	bad := filepath.Join(dir, "bad.pem")
	os.WriteFile(bad, []byte("not a certificate"), 0o644)
	if _, err := runWith(rack.Server.URL, bad); err == nil || !strings.Contains(err.Error(), "holds no PEM certificate") {
		t.Errorf("bad CA file: %v", err)
	}
	if out, err := runWith(plain.Server.URL, filepath.Join(dir, "absent.pem")); err != nil || !strings.Contains(out, "unauthenticated") {
		t.Errorf("no CA: %v\n%s", err, out)
	}
}
