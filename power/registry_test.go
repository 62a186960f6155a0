package power

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kilnhq/kiln/spec"
)

func TestRegistryMatchesSpec(t *testing.T) {
	want := slices.Clone(spec.BMCDrivers)
	slices.Sort(want)
	if got := Names(); !slices.Equal(got, want) {
		t.Fatalf("registered drivers %v, spec allows %v", got, want)
	}
	if _, err := New(Target{Driver: "telnet"}); !errors.Is(err, ErrPermanent) {
		t.Fatalf("unknown driver: %v", err)
	}
}

func TestResolveSecret(t *testing.T) {
	f := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(f, []byte("from-file\n"), 0o600)
	t.Setenv("KILN_TEST_PW", "from-env")
	for _, c := range []struct {
		ref  *spec.SecretRef
		want string
		err  string
	}{
		{nil, "", ""},
		{&spec.SecretRef{FromFile: f}, "from-file", ""},
		{&spec.SecretRef{FromEnv: "KILN_TEST_PW"}, "from-env", ""},
		{&spec.SecretRef{Value: "plain"}, "plain", ""},
		{&spec.SecretRef{Value: "plain", FromSecret: true}, "plain", ""},
		{&spec.SecretRef{FromSecret: true}, "", "kept in the rack's secrets by Kiln, but not loaded"},
		{&spec.SecretRef{FromFile: f + ".missing"}, "", "password file " + f + ".missing: no such file"},
		{&spec.SecretRef{FromEnv: "KILN_TEST_UNSET"}, "", "environment variable KILN_TEST_UNSET is not set"},
	} {
		got, err := ResolveSecret(c.ref)
		if got != c.want || (c.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.err)) {
			t.Errorf("%+v: got %q, %v; want %q, %q", c.ref, got, err, c.want, c.err)
		}
	}
}

func TestTargetFor(t *testing.T) {
	t.Setenv("KILN_TEST_PW", "pw")
	m := &spec.Machine{Spec: spec.MachineSpec{BMC: &spec.BMC{Driver: "redfish", Address: "bmc1", Username: "root",
		Password: &spec.SecretRef{FromEnv: "KILN_TEST_PW"}, Options: map[string]string{"systemID": "1"}}}}
	m.Metadata.Name = "m1"
	tg, err := TargetFor(m)
	if err != nil || tg.Password != "pw" || tg.Driver != "redfish" || tg.Options["systemID"] != "1" || tg.Machine != "m1" {
		t.Fatalf("%+v %v", tg, err)
	}
	if s := tg.String(); strings.Contains(s, "pw") && !strings.Contains(s, "redfish") {
		t.Fatalf("target string: %s", s)
	}
	m.Spec.BMC = nil
	if tg, _ := TargetFor(m); tg.Driver != "manual" {
		t.Fatalf("no BMC should be manual: %+v", tg)
	}
}

func TestManualSaysWhatToDo(t *testing.T) {
	d, _ := New(Target{Machine: "m1", Driver: "manual"})
	ctx := context.Background()
	if st, err := d.Status(ctx); st != Unknown || err != nil {
		t.Fatalf("status %v %v", st, err)
	}
	err := d.PowerOn(ctx)
	if !errors.Is(err, ErrManual) || !errors.Is(err, ErrPermanent) || !strings.Contains(err.Error(), "power machine m1 on by hand") {
		t.Fatalf("power on: %v", err)
	}
	if err := d.SetBoot(ctx, Boot{Device: Network}); !strings.Contains(err.Error(), "boot from network by hand") {
		t.Fatalf("set boot: %v", err)
	}
}
