package netlab

import (
	"testing"
	"time"
)

// A redeploy as `kiln vbmc` logged it in the lab (TestLabFleet, vm-a):
// network boot for the agent, then the disk.
const redeployLog = `time=2026-12-04T17:43:22.845Z level=INFO msg="boot override" vm=vm-a boot=Once/Pxe/Legacy
time=2026-12-04T17:43:22.868Z level=INFO msg="QEMU exited" vm=vm-a pid=31020 status="exit 0"
time=2026-12-04T17:43:22.868Z level=INFO msg="power cycle: off" vm=vm-a
time=2026-12-04T17:43:22.870Z level=INFO msg="QEMU started" vm=vm-a pid=31370 boot="Pxe first, once" serial=/tmp/x/serial.log
time=2026-12-04T17:43:23.021Z level=INFO msg="power on" vm=vm-a boot=Once/Pxe/Legacy
time=2026-12-04T17:43:23.021Z level=INFO msg="one-time boot override used" vm=vm-a boot=Once/Pxe/Legacy
time=2026-12-04T17:43:30.000Z level=DEBUG msg="QEMU command line" vm=vm-a args="-boot once=n"
time=2026-12-04T17:43:54.674Z level=INFO msg="boot override" vm=vm-a boot=Once/Hdd/Legacy
time=2026-12-04T17:43:54.692Z level=INFO msg="power cycle: off" vm=vm-a
time=2026-12-04T17:43:54.694Z level=INFO msg="QEMU started" vm=vm-a pid=31707 boot="Hdd first, once" serial=/tmp/x/serial.log
time=2026-12-04T17:43:54.692Z level=INFO msg="QEMU exited" vm=vm-a pid=31370 status="exit 0"
time=2026-12-04T17:43:54.863Z level=INFO msg="power on" vm=vm-a boot=Once/Hdd/Legacy
`

func TestRedeployOutage(t *testing.T) {
	acts := ParseVBMCActions(redeployLog)
	if len(acts) != 11 {
		t.Fatalf("%d actions, want 11 (the debug line is none): %+v", len(acts), acts)
	}
	o, ok := RedeployOutage("vm-a", acts)
	at := func(s string) time.Time { x, _ := time.Parse(time.RFC3339Nano, s); return x }
	if !ok || o.NetBoots != 1 || !o.From.Equal(at("2026-12-04T17:43:22.845Z")) || !o.To.Equal(at("2026-12-04T17:43:54.694Z")) {
		t.Errorf("outage %+v %v", o, ok)
	}
	if _, ok := RedeployOutage("vm-a", acts[:8]); ok {
		t.Error("an outage without its disk boot")
	}
	next := Outage{VM: "vm-b", From: o.To.Add(time.Second), To: o.To.Add(time.Minute)}
	if _, _, found := Overlap([]Outage{next, o}); found {
		t.Error("one after the other overlap")
	}
	next.From = o.To.Add(-time.Millisecond)
	if a, b, found := Overlap([]Outage{next, o}); !found || a.VM != "vm-a" || b.VM != "vm-b" {
		t.Errorf("overlapping outages: %v %v %v", a, b, found)
	}
}
