package spec

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Size
		err  bool
	}{
		{in: "0", want: 0},
		{in: "512", want: 512},
		{in: "512B", want: 512},
		{in: "100G", want: 100e9},
		{in: "1.5TiB", want: 3 << 39},
		{in: "512MiB", want: 512 << 20},
		{in: " 2 T ", want: 2e12},
		{in: "", err: true},
		{in: "G", err: true},
		{in: "lots", err: true},
		{in: "-1G", err: true},
		{in: "NaN", err: true},
		{in: "NaNTiB", err: true},
		{in: "Inf", err: true},
		{in: "1e30T", err: true},
	} {
		got, err := ParseSize(tc.in)
		if (err != nil) != tc.err || got != tc.want && !tc.err {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestDuration(t *testing.T) {
	var d Duration
	if err := d.parseScalar("1h30m"); err != nil || d.Duration != 90*time.Minute {
		t.Errorf("1h30m: %v %v", d, err)
	}
	for _, bad := range []string{"", "1 hour", "-5m", "10"} {
		if err := new(Duration).parseScalar(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	b, err := Duration{90 * time.Second}.MarshalJSON()
	if err != nil || string(b) != `"1m30s"` {
		t.Errorf("MarshalJSON: %s %v", b, err)
	}
	if err := d.UnmarshalJSON([]byte(`"2h"`)); err != nil || d.Duration != 2*time.Hour {
		t.Errorf("UnmarshalJSON: %v %v", d, err)
	}
}

// TestDefaults applies every default tag (setScalar panics on a bad one)
// and checks that defaults of enum fields are among the allowed values.
func TestDefaults(t *testing.T) {
	objs := []any{
		&Rack{Spec: RackSpec{Switches: []Switch{{Ports: []SwitchPort{{}}}}}},
		&Subnet{Spec: SubnetSpec{DynamicRange: &IPRange{}, Reserved: []IPRange{{}}}},
		&Image{Spec: ImageSpec{Kernel: &Artifact{}, Initrd: &Artifact{}, Disk: &Artifact{}}},
		&Machine{Spec: MachineSpec{
			Interfaces: []Interface{{}}, Bonds: []Bond{{}}, VLANs: []VLAN{{}},
			BMC: &BMC{Password: &SecretRef{}}, RootDisk: &DiskSelector{},
		}},
		&Profile{Spec: ProfileSpec{Selector: &LabelSelector{}}},
	}
	for _, o := range objs {
		applyDefaults(reflect.ValueOf(o))
		checkEnums(reflect.ValueOf(o).Elem(), "", func(path, msg string) {
			t.Errorf("%T: default %s: %s", o, path, msg)
		})
	}
	m := objs[3].(*Machine)
	if m.Spec.State != StateReady || m.Spec.Firmware != "uefi" || m.Spec.Arch != "amd64" || m.Spec.Bonds[0].Mode != "active-backup" || m.Spec.RootDisk.Prefer != "first" {
		t.Errorf("machine defaults: %+v", m.Spec)
	}
	s := objs[1].(*Subnet)
	if s.Spec.Mode != ModeManaged || s.Spec.MTU != 1500 || s.Spec.LeaseTime.Duration != time.Hour {
		t.Errorf("subnet defaults: %+v", s.Spec)
	}
}

// TestBMCDriversMatchEnum keeps the BMC driver list and the enum tag equal.
func TestBMCDriversMatchEnum(t *testing.T) {
	f, _ := reflect.TypeFor[BMC]().FieldByName("Driver")
	if got := strings.Join(BMCDrivers, ","); f.Tag.Get("enum") != got {
		t.Errorf("enum tag %q, BMCDrivers %q", f.Tag.Get("enum"), got)
	}
}

func TestEditDistance(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{{"", "", 0}, {"abc", "", 3}, {"kitten", "sitting", 3}, {"interfacs", "interfaces", 1}} {
		if got := editDistance(tc.a, tc.b); got != tc.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
	if s := suggest("Machin", Kinds); s != "Machine" {
		t.Errorf("suggest: %q", s)
	}
	if s := suggest("zzzzzz", Kinds); s != "" {
		t.Errorf("suggest: %q for a far-off word", s)
	}
}
