package keys

import (
	"strings"
	"testing"
	"time"
)

func TestRackKeysAreUnderRackGrants(t *testing.T) {
	l := New("/k")
	grants := l.RackGrants("r1")
	writable := func(key string) bool {
		for _, g := range grants {
			if g.Write && strings.HasPrefix(key, g.Prefix) {
				return true
			}
		}
		return false
	}
	for _, k := range []string{
		l.Task("r1", "m"), l.Token("r1", "m"), l.Report("r1", "m"), l.Timeline("r1", "m"),
		l.Discovered("r1", "aa:bb"), l.Lease("r1", "s", "10.0.0.1"), l.ImageStatus("r1", "img"),
		l.PowerState("r1", "m"), l.RackElection("r1") + "x",
	} {
		if !writable(k) {
			t.Errorf("rack r1 cannot write its own key %s", k)
		}
	}
	for _, k := range []string{
		l.Desired() + "x", l.MachineStatus("m"), l.Secret("r1", "m"), l.Token("r10", "m"),
		l.Report("r2", "m"), l.Task("r2", "m"), l.Events("m"), l.Source("git"),
	} {
		if writable(k) {
			t.Errorf("rack r1 may write %s", k)
		}
	}
}

func TestSplit(t *testing.T) {
	l := New("")
	rack, rest, ok := l.SplitReport(l.Report("r1", "m-1"))
	if !ok || rack != "r1" || rest != "m-1" {
		t.Fatalf("SplitReport = %q %q %v", rack, rest, ok)
	}
	if _, _, ok := l.SplitReport(l.Token("r1", "m")); ok {
		t.Fatal("a token key split as a report")
	}
	if _, _, ok := l.SplitReport(l.Report("r1", "")); ok {
		t.Fatal("a rack prefix split as a key")
	}
	if _, _, ok := l.SplitTask(l.Task("r1", "m/x")); ok {
		t.Fatal("a task key with a '/' in the machine split")
	}
	if rack, img, ok := l.SplitImageStatus(l.ImageStatus("r1", "ubuntu")); !ok || rack != "r1" || img != "ubuntu" {
		t.Fatalf("SplitImageStatus = %q %q %v", rack, img, ok)
	}
	if rack, m, ok := l.SplitPowerState(l.PowerState("r1", "m1")); !ok || rack != "r1" || m != "m1" {
		t.Fatalf("SplitPowerState = %q %q %v", rack, m, ok)
	}
	if _, _, ok := l.SplitPowerState(l.PowerState("r1", "m/x")); ok {
		t.Fatal("a power state key with a '/' in the machine split")
	}
	if rack, mac, ok := l.SplitDiscovered(l.Discovered("r1", "aa:bb")); !ok || rack != "r1" || mac != "aa:bb" {
		t.Fatalf("SplitDiscovered = %q %q %v", rack, mac, ok)
	}
	if rack, m, ok := l.SplitSecret(l.Secret("r1", "m")); !ok || rack != "r1" || m != "m" {
		t.Fatalf("SplitSecret = %q %q %v", rack, m, ok)
	}
	if m, ok := l.SplitMachineStatus(l.MachineStatus("m")); !ok || m != "m" {
		t.Fatalf("SplitMachineStatus = %q %v", m, ok)
	}
	if _, ok := l.SplitMachineStatus(l.MachineStatus("")); ok {
		t.Fatal("the status prefix split as a key")
	}
	if g, ok := l.SplitGenIndex(l.GenIndex("g1")); !ok || g != "g1" {
		t.Fatalf("SplitGenIndex = %q %v", g, ok)
	}
	if seg, name, ok := SplitGenObject(GenObject(UnmanagedSegment, "m")); !ok || seg != "unmanaged" || name != "m" {
		t.Fatalf("SplitGenObject = %q %q %v", seg, name, ok)
	}
	if g, seg, name, ok := l.SplitDesired(l.Gen("g1") + GenObject("machines", "m")); !ok || g != "g1" || seg != "machines" || name != "m" {
		t.Fatalf("SplitDesired = %q %q %q %v", g, seg, name, ok)
	}
	for _, k := range []string{l.DesiredPointer(), l.GenIndex("g1"), l.Gen("g1")} {
		if _, _, _, ok := l.SplitDesired(k); ok {
			t.Errorf("SplitDesired(%q) is an object", k)
		}
	}
}

// TestLayoutIsStable pins every key family byte for byte: a key that
// changes strands what an older Kiln wrote.
func TestLayoutIsStable(t *testing.T) {
	l := New("/kiln")
	at := time.Unix(0, 1700000000123456789)
	for _, c := range []struct{ got, want string }{
		{l.Prefix(), "/kiln/"},
		{New("").Prefix(), "/kiln/"},
		{l.Desired(), "/kiln/desired/"},
		{l.DesiredPointer(), "/kiln/desired/current"},
		{l.GenIndex("g1"), "/kiln/desired/gens/g1"},
		{l.GenIndex(""), "/kiln/desired/gens/"},
		{l.Gen("g1"), "/kiln/desired/g/g1/"},
		{l.GenSegment("g1", "machines"), "/kiln/desired/g/g1/machines/"},
		{l.Gen("g1") + GenObject("machines", "m1"), "/kiln/desired/g/g1/machines/m1"},
		{l.Gen("g1") + GenObject(UnmanagedSegment, "m1"), "/kiln/desired/g/g1/unmanaged/m1"},
		{l.Source("git"), "/kiln/sources/git"},
		{l.Source(""), "/kiln/sources/"},
		{l.Elections(), "/kiln/election/"},
		{l.RegionElection(), "/kiln/election/region/"},
		{l.RackElection("r1"), "/kiln/election/rack/r1/"},
		{l.MachineStatus("m1"), "/kiln/status/machines/m1"},
		{l.MachineStatus(""), "/kiln/status/machines/"},
		{l.Events(""), "/kiln/events/"},
		{l.Events("m1"), "/kiln/events/m1/"},
		{l.Event("m1", at, 7), "/kiln/events/m1/01700000000123456789.007"},
		{l.Task("r1", "m1"), "/kiln/tasks/r1/m1"},
		{l.Task("r1", ""), "/kiln/tasks/r1/"},
		{l.Task("", ""), "/kiln/tasks/"},
		{l.Secret("r1", "m1"), "/kiln/secrets/r1/m1"},
		{l.Token("r1", "m1"), "/kiln/tokens/r1/m1"},
		{l.Report("r1", "m1"), "/kiln/reports/r1/m1"},
		{l.Report("", ""), "/kiln/reports/"},
		{l.Timeline("r1", "m1"), "/kiln/timeline/r1/m1"},
		{l.Discovered("r1", "52:54:00:00:00:01"), "/kiln/discovered/r1/52:54:00:00:00:01"},
		{l.Discovered("", ""), "/kiln/discovered/"},
		{l.Lease("r1", "net-a", "10.0.0.5"), "/kiln/leases/r1/net-a/10.0.0.5"},
		{l.Lease("r1", "", ""), "/kiln/leases/r1/"},
		{l.Lease("", "", ""), "/kiln/leases/"},
		{l.ImageStatus("r1", "ubuntu"), "/kiln/imagestatus/r1/ubuntu"},
		{l.ImageStatus("", ""), "/kiln/imagestatus/"},
		{l.PowerState("r1", "m1"), "/kiln/powerstate/r1/m1"},
		{l.PowerState("", ""), "/kiln/powerstate/"},
	} {
		if c.got != c.want {
			t.Errorf("key %q, want %q", c.got, c.want)
		}
	}
}
