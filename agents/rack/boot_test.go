package rack

import (
	"net/netip"
	"testing"
	"time"

	"github.com/kilnhq/kiln/netboot/dhcp"
)

// LeaseIP answers the address Kiln's DHCP gave a MAC: a reserved lease or
// a live one, never an ended or expired one.
func TestLeaseIP(t *testing.T) {
	now := time.Now()
	a := &Agent{leases: map[string]dhcp.Lease{
		"live":     {IP: netip.MustParseAddr("10.0.0.5"), MAC: "52:54:00:00:00:01", Expires: now.Add(time.Hour), Updated: now},
		"ended":    {IP: netip.MustParseAddr("10.0.0.6"), MAC: "52:54:00:00:00:02", Expires: now, Updated: now},
		"expired":  {IP: netip.MustParseAddr("10.0.0.7"), MAC: "52:54:00:00:00:03", Expires: now.Add(-time.Hour), Updated: now.Add(-2 * time.Hour)},
		"reserved": {IP: netip.MustParseAddr("10.0.0.8"), MAC: "52:54:00:00:00:04", Reserved: true, Expires: now.Add(-time.Hour), Updated: now.Add(-2 * time.Hour)},
	}}
	b := bootBackend{a}
	for mac, want := range map[string]string{
		"52:54:00:00:00:01": "10.0.0.5", "52:54:00:00:00:02": "", "52:54:00:00:00:03": "",
		"52:54:00:00:00:04": "10.0.0.8", "52:54:00:00:00:05": "", "52:54:00:00:00:0A": "",
	} {
		got, ok := b.LeaseIP(mac)
		if (want == "") == ok || ok && got.String() != want {
			t.Errorf("LeaseIP(%s) = %v %v, want %q", mac, got, ok, want)
		}
	}
	if got, ok := b.LeaseIP("52:54:00:00:00:01"); !ok || got.String() != "10.0.0.5" {
		t.Errorf("live lease: %v %v", got, ok)
	}
}
