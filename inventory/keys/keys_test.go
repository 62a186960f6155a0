package keys

import (
	"strings"
	"testing"
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
		l.RackElection("r1") + "x",
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
	rack, rest, ok := l.Split("reports", l.Report("r1", "m-1"))
	if !ok || rack != "r1" || rest != "m-1" {
		t.Fatalf("Split = %q %q %v", rack, rest, ok)
	}
	if _, _, ok := l.Split("reports", l.Token("r1", "m")); ok {
		t.Fatal("a token key split as a report")
	}
	if _, _, ok := l.Split("reports", l.Report("r1", "")); ok {
		t.Fatal("a rack prefix split as a key")
	}
}
