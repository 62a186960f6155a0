package spec

import "testing"

func TestDiscoveredNameRoundTrips(t *testing.T) {
	const mac = "52:54:00:ab:cd:ef"
	name := DiscoveredName(mac)
	if name != "discovered-52-54-00-ab-cd-ef" {
		t.Fatalf("DiscoveredName = %q", name)
	}
	if !IsDiscovered(name) || IsDiscovered("vm-1") {
		t.Error("IsDiscovered wrong")
	}
	if got, ok := DiscoveredMAC(name); !ok || got != mac {
		t.Errorf("DiscoveredMAC(%q) = %q, %v", name, got, ok)
	}
	for _, bad := range []string{"vm-1", "discovered-", "discovered-zz-54-00-ab-cd-ef", "discovered-52-54-00-ab-cd", "discovered-52-54-00-ab-cd-ef-01-02"} {
		if _, ok := DiscoveredMAC(bad); ok {
			t.Errorf("DiscoveredMAC(%q) accepted", bad)
		}
	}
}
