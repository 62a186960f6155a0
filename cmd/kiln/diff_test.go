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
	inv := invtest.Load(t, testInventory+goldenExtra+`---
apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata: {name: running}
spec:
  interfaces: [{name: eno1, mac: "52:54:00:42:00:09", subnet: net1}]
  state: deployed
  image: debian
  adopt: true
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
	if want := "\n  ! will be powered on and commissioned"; !strings.HasSuffix(got["vm-1"], want) {
		t.Errorf("new machine:\n%s\nwant it to end with%s", got["vm-1"], want)
	}
}
