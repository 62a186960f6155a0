package main

import (
	"strings"
	"testing"

	"github.com/kilnhq/kiln/inventory/etcdtest/invtest"
	"github.com/kilnhq/kiln/spec"
)

// kiln diff says what each added Machine gets: adoption, or a power-on
// and commissioning (marked !, as every change touching power is).
func TestDiffAddedMachines(t *testing.T) {
	inv := invtest.Load(t, `apiVersion: kiln.dev/v1alpha1
kind: Rack
metadata: {name: r1}
---
apiVersion: kiln.dev/v1alpha1
kind: Subnet
metadata: {name: net1}
spec: {cidr: 192.0.2.0/24, rack: r1, gateway: 192.0.2.1}
---
apiVersion: kiln.dev/v1alpha1
kind: Image
metadata: {name: debian}
spec:
  purpose: os
  disk: {url: "http://images.invalid/debian.raw", sha256: "9a8b7c6d5e4f30211203f4e5d6c7b8a99a8b7c6d5e4f30211203f4e5d6c7b8a9"}
---
apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata: {name: running}
spec:
  bmc: {driver: manual}
  interfaces: [{name: eno1, mac: "02:00:00:00:00:01", subnet: net1}]
  state: deployed
  image: debian
  adopt: true
---
apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata: {name: fresh}
spec:
  bmc: {driver: manual}
  interfaces: [{name: eno1, mac: "02:00:00:00:00:02", subnet: net1}]
`)
	got := map[string]string{}
	for _, c := range diffInventories(spec.NewInventory(), inv) {
		if c.kind == spec.KindMachine {
			got[c.name] = c.String()
		}
	}
	if want := "\n    adopted as deployed with image debian: no power action, no boot, disk untouched; Kiln watches its power"; !strings.HasSuffix(got["running"], want) {
		t.Errorf("adopted machine:\n%s\nwant it to end with%s", got["running"], want)
	}
	if want := "\n  ! will be powered on and commissioned"; !strings.HasSuffix(got["fresh"], want) {
		t.Errorf("new machine:\n%s\nwant it to end with%s", got["fresh"], want)
	}
}
