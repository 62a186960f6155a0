package inventory

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/kilnhq/kiln/inventory/etcdtest"
	"github.com/kilnhq/kiln/spec"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// secretsInventory has two racks that opt in to plaintext passwords, a
// machine on each, and one with a reference.
func secretsInventory(pw1, pw2 string, withM2 bool) string {
	doc := `apiVersion: kiln.dev/v1alpha1
kind: Rack
metadata: {name: r1}
spec: {allowPlaintextPasswords: true}
---
apiVersion: kiln.dev/v1alpha1
kind: Rack
metadata: {name: r2}
spec: {allowPlaintextPasswords: true}
---
apiVersion: kiln.dev/v1alpha1
kind: Subnet
metadata: {name: n1}
spec: {cidr: 10.1.0.0/24, rack: r1}
---
apiVersion: kiln.dev/v1alpha1
kind: Subnet
metadata: {name: n2}
spec: {cidr: 10.2.0.0/24, rack: r2}
---
apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata: {name: m1}
spec:
  interfaces: [{name: eno1, mac: "52:54:00:00:01:01", subnet: n1}]
  bmc: {driver: ipmi, address: 10.1.0.250, username: admin, password: %q}
---
apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata: {name: m3}
spec:
  interfaces: [{name: eno1, mac: "52:54:00:00:01:03", subnet: n1}]
  bmc: {driver: ipmi, address: 10.1.0.251, username: admin, password: {fromEnv: M3_PW}}
`
	doc = fmt.Sprintf(doc, pw1)
	if withM2 {
		doc += fmt.Sprintf(`---
apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata: {name: m2}
spec:
  interfaces: [{name: eno1, mac: "52:54:00:00:02:01", subnet: n2}]
  bmc: {driver: ipmi, address: 10.2.0.250, username: admin, password: %q}
`, pw2)
	}
	return doc
}

// A plaintext BMC password never sits in desired/, which every rack and
// viewer reads: Apply moves it to secrets/<rack>/<machine>, writes it
// before the revision is published, updates it when only the password
// changes, and drops it when no machine needs it; a rack reads back its
// own machines' passwords and no other rack's.
func TestApplyMovesPlaintextPasswordsToSecrets(t *testing.T) {
	cli, _ := etcdtest.Start(t)
	ctx := context.Background()
	st := NewStore(cli, "", quiet())
	l := st.Keys()
	apply := func(rev, doc string) {
		t.Helper()
		inv := mustLoad(t, spec.Load(fstest.MapFS{"inv.yaml": {Data: []byte(doc)}}))
		before := inv.Machines["m1"].Spec.BMC.Password.Value
		if _, err := st.Apply(ctx, inv, ApplyMeta{Source: "t", Revision: rev}); err != nil {
			t.Fatal(err)
		}
		if inv.Machines["m1"].Spec.BMC.Password.Value != before {
			t.Fatal("Apply changed the caller's inventory")
		}
	}
	// nowhere returns the keys outside secrets/ whose value holds s.
	nowhere := func(s string) {
		t.Helper()
		resp, err := cli.Get(ctx, l.Prefix(), clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range resp.Kvs {
			if strings.Contains(string(kv.Value), s) && !strings.HasPrefix(string(kv.Key), l.Secret("", "")) {
				t.Errorf("%s holds the password %q: %s", kv.Key, s, kv.Value)
			}
		}
	}
	secret := func(rack, m string) string {
		t.Helper()
		resp, err := cli.Get(ctx, l.Secret(rack, m))
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) == 0 {
			return ""
		}
		return string(resp.Kvs[0].Value)
	}

	apply("1", secretsInventory("pw-one-1", "pw-two-1", true))
	nowhere("pw-one-1")
	nowhere("pw-two-1")
	if got := secret("r1", "m1"); got != `{"password":"pw-one-1"}` {
		t.Fatalf("secret of m1: %q", got)
	}
	snap, err := st.Snapshot(ctx, spec.KindMachine)
	if err != nil {
		t.Fatal(err)
	}
	if p := snap.Inventory.Machines["m1"].Spec.BMC.Password; p == nil || !p.FromSecret || p.Value != "" {
		t.Fatalf("desired m1 password: %+v, want only the marker", p)
	}
	// Rack r1 fills in its own machine's password and nothing of r2's.
	if err := st.FillSecrets(ctx, "r1", snap.Inventory); err != nil {
		t.Fatal(err)
	}
	if got := snap.Inventory.Machines["m1"].Spec.BMC.Password.Value; got != "pw-one-1" {
		t.Errorf("r1 filled m1's password with %q", got)
	}
	if got := snap.Inventory.Machines["m2"].Spec.BMC.Password.Value; got != "" {
		t.Errorf("r1 read r2's machine's password %q", got)
	}
	if p := snap.Inventory.Machines["m3"].Spec.BMC.Password; p.FromEnv != "M3_PW" || p.Value != "" {
		t.Errorf("a reference must stay as it is: %+v", p)
	}

	// Only the password changes (same revision): the secret follows.
	apply("1", secretsInventory("pw-one-2", "pw-two-1", true))
	if got := secret("r1", "m1"); got != `{"password":"pw-one-2"}` {
		t.Fatalf("secret of m1 after a password change: %q", got)
	}
	nowhere("pw-one-2")
	// m2 leaves the source: its secret goes.
	apply("2", secretsInventory("pw-one-2", "", false))
	if got := secret("r2", "m2"); got != "" {
		t.Fatalf("stale secret of m2 kept: %q", got)
	}
	if got := secret("r1", "m1"); got == "" {
		t.Fatal("m1's secret dropped")
	}
}
