//go:build e2e

package e2e

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/e2e/netlab"
)

// kiln backup takes an etcd snapshot from a running server mid-lifecycle;
// kiln restore makes a fresh data folder from it; kiln server on that
// folder carries on with every machine where it was. A lease handed out
// after the snapshot is gone from etcd: its client's next request
// (INIT-REBOOT, as after a reboot) is answered and stored again.
func TestBackupRestore(t *testing.T) {
	netlab.Require(t)
	r := netlab.Rack(t)
	k := startKilnRack(t, r, "managed", 1)
	agent, _ := k.leader()

	early := dora(t, r, "bk0", "02:bb:00:00:00:01")
	k.waitCLI("the early lease stored", func(s string) bool { return strings.Contains(s, early.String()) }, "get", "leases")
	// Machines as the region leaves them: the manual BMCs wait for a person.
	phases := k.waitCLI("every machine waiting for its manual power-on", func(s string) bool {
		return strings.Count(s, "commissioning") == 4
	}, "get", "machines")

	snap := filepath.Join(t.TempDir(), "kiln.db")
	if err := os.Chmod(filepath.Dir(snap), 0o755); err != nil {
		t.Fatal(err)
	}
	out := k.kiln("backup", "--out", snap)
	if !strings.Contains(out, "revision") || !strings.Contains(out, "keys") {
		t.Fatalf("kiln backup: %s", out)
	}
	if out, err := r.Srv.Exec(kilnBin, "backup", "--out", snap); err == nil {
		t.Fatalf("a second backup to the same file succeeded: %s", out)
	}

	late := dora(t, r, "bk1", "02:bb:00:00:00:02")
	k.waitCLI("the late lease stored", func(s string) bool { return strings.Contains(s, late.String()) }, "get", "leases")

	// Restore into a new data folder and start over on it.
	for _, p := range []*netlab.Proc{agent, k.server} {
		if err := p.Stop(); err != nil {
			t.Logf("stop %s: %v", p.Name, err)
		}
	}
	if out, err := r.Srv.Exec(kilnBin, "restore", "--snapshot", snap, "--data-dir", k.data); err == nil {
		t.Fatalf("kiln restore over the live data folder succeeded: %s", out)
	}
	k.data = t.TempDir()
	t.Log(k.kiln("restore", "--snapshot", snap, "--data-dir", k.data))
	k.startServer()
	k.startAgent("agent-restored", nil)
	k.leader()

	if got := k.kiln("get", "machines"); machinePhases(got) != machinePhases(phases) {
		t.Errorf("machines after the restore:\n%s\nbefore the backup:\n%s", got, phases)
	}
	leases := k.kiln("get", "leases")
	if !strings.Contains(leases, early.String()) || strings.Contains(leases, late.String()) {
		t.Errorf("leases after the restore (want %s, not %s):\n%s", early, late, leases)
	}

	// The late client, rebooting, asks for its address again. The rack has
	// no record of it, so it stays silent (RFC 2131 4.3.2), and the client
	// starts over with a DISCOVER, which gets it an address and a stored
	// lease again.
	p, err := netlab.NewProbe(r.Cli, "bk1", netlab.ProbeOpts{Wait: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if ack, _, _ := p.InitReboot(late); ack != nil {
		t.Errorf("INIT-REBOOT for %s with no lease on record: answered with DHCP type %d, want silence", late, ack.Type())
	}
	_, ack, _, err := p.DORA()
	if err != nil || ack == nil || ack.Type() != netlab.Ack {
		t.Fatalf("the late client after the restore: %v %+v", err, ack)
	}
	t.Logf("the late client had %s before the restore and got %s after it", late, ack.YIAddr)
	k.waitCLI("the late client's lease stored again", func(s string) bool { return strings.Contains(s, ack.YIAddr.String()) }, "get", "leases")
}

// dora gives a new client interface mac a dynamic lease and returns it.
func dora(t *testing.T, r *netlab.RackNet, iface, mac string) netip.Addr {
	t.Helper()
	p, err := netlab.NewProbe(r.Cli, r.AddClientIface(iface, mac), netlab.ProbeOpts{Wait: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	_, ack, _, err := p.DORA()
	if err != nil || ack == nil || ack.Type() != netlab.Ack {
		t.Fatalf("%s: no lease: %v %+v", mac, err, ack)
	}
	return ack.YIAddr
}

// machinePhases is the NAME and PHASE columns of kiln get machines.
func machinePhases(table string) string {
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimSpace(table), "\n") {
		if f := strings.Fields(line); len(f) >= 2 {
			b.WriteString(f[0] + " " + f[1] + "\n")
		}
	}
	return b.String()
}
