package power

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kilnhq/kiln/power/vbmc"
	"github.com/kilnhq/kiln/power/vbmc/vbmctest"
	"github.com/kilnhq/kiln/spec/kilntest"
)

func redfishTarget(t *testing.T, b *vbmc.BMC) Target {
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, b.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	return Target{Machine: "vm-1", Driver: "redfish", Address: b.RedfishTLSURL(),
		Username: vbmctest.Username, Password: vbmctest.Password, Options: map[string]string{"caFile": ca}}
}

func TestRedfishAgainstVirtualBMC(t *testing.T) {
	m := vbmc.NewMemory()
	b := vbmctest.Start(t, m)
	e, _, _ := testExecutor(t, Policy{})
	ctx := context.Background()
	tg := redfishTarget(t, b)

	if st, err := e.Status(ctx, tg); err != nil || st != Off {
		t.Fatalf("status: %v %v", st, err)
	}
	setBoot(t, e, tg, b, Boot{Device: Network, UEFI: true}, vbmc.Boot{Target: vbmc.TargetPxe, Enabled: vbmc.BootOnce, UEFI: true})
	if err := e.PowerOn(ctx, tg); err != nil {
		t.Fatal(err)
	}
	if st, _ := m.State(ctx); st != vbmc.On {
		t.Fatalf("machine is %v after power on", st)
	}
	if err := e.PowerOn(ctx, tg); err != nil { // already on: nothing to do
		t.Fatal(err)
	}
	if err := e.PowerCycle(ctx, tg); err != nil {
		t.Fatal(err)
	}
	if err := e.PowerOff(ctx, tg, false); err != nil { // graceful
		t.Fatal(err)
	}
	waitState(t, m, vbmc.Off)
	setBoot(t, e, tg, b, Boot{Device: Disk, Persistent: true}, vbmc.Boot{Target: vbmc.TargetHdd, Enabled: vbmc.BootContinuous})
	if err := e.PowerOn(ctx, tg); err != nil {
		t.Fatal(err)
	}
	if err := e.PowerOff(ctx, tg, true); err != nil {
		t.Fatal(err)
	}
	if st, err := e.Status(ctx, tg); err != nil || st != Off {
		t.Fatalf("status after hard off: %v %v", st, err)
	}

	// bootMode: omit leaves BootSourceOverrideMode out of the PATCH: the
	// BMC keeps the mode it had.
	if err := e.SetBoot(ctx, tg, Boot{Device: Network, UEFI: true}); err != nil {
		t.Fatal(err)
	}
	omit := tg
	omit.Options = map[string]string{"caFile": tg.Options["caFile"], "bootMode": "omit"}
	if err := e.SetBoot(ctx, omit, Boot{Device: Disk}); err != nil {
		t.Fatal(err)
	}
	if got := b.Boot(); got.Target != vbmc.TargetHdd || !got.UEFI {
		t.Fatalf("bootMode omit: the BMC has %+v, want Hdd with its UEFI mode untouched", got)
	}
}

func waitState(t *testing.T, m *vbmc.Memory, want vbmc.PowerState) {
	t.Helper()
	kilntest.Eventually(t, 30*time.Second, "the machine to be "+string(want), func() bool {
		st, _ := m.State(context.Background())
		return st == want
	})
}

func TestRedfishTLSVerification(t *testing.T) {
	b := vbmctest.Start(t, nil)
	ctx := context.Background()
	tg := redfishTarget(t, b)
	delete(tg.Options, "caFile")
	d, err := New(tg)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	_, err = d.Status(ctx)
	if !errors.Is(err, ErrPermanent) || !strings.Contains(err.Error(), "TLS verification failed") || !strings.Contains(err.Error(), "caFile") {
		t.Fatalf("unverifiable certificate: %v", err)
	}
	tg.Insecure = true
	d2, _ := New(tg)
	defer d2.Close()
	if st, err := d2.Status(ctx); err != nil || st != Off {
		t.Fatalf("insecure: %v %v", st, err)
	}
}

// TestRedfishCAFileReloaded: the BMC's certificate is replaced while the
// driver runs; the driver trusts the new CA file without a restart.
func TestRedfishCAFileReloaded(t *testing.T) {
	b := vbmctest.Start(t, nil)
	ctx := context.Background()
	tg := redfishTarget(t, b)
	ca := tg.Options["caFile"]
	// Every version of the file has the same size, so that only a failed
	// verification can reveal the change in the second case.
	writeCA := func(pem []byte, mtime time.Time) {
		t.Helper()
		padded := append(append([]byte{}, pem...), strings.Repeat("\n", 4096-len(pem))...)
		if err := os.WriteFile(ca, padded, 0o600); err != nil {
			t.Fatal(err)
		}
		if !mtime.IsZero() {
			if err := os.Chtimes(ca, mtime, mtime); err != nil {
				t.Fatal(err)
			}
		}
	}
	writeCA(b.CertPEM(), time.Time{})
	d, err := New(tg)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	rd := d.(*redfishDriver)
	if _, err := d.Status(ctx); err != nil {
		t.Fatal(err)
	}
	// renew replaces the BMC's certificate and drops the open connections,
	// as a BMC restarting its web server does.
	renew := func() {
		t.Helper()
		if err := b.RenewCertificate(); err != nil {
			t.Fatal(err)
		}
		rd.http.CloseIdleConnections()
	}

	t.Run("file changed", func(t *testing.T) {
		renew()
		writeCA(b.CertPEM(), time.Now().Add(time.Minute))
		if _, err := d.Status(ctx); err != nil {
			t.Fatalf("after the CA file changed: %v", err)
		}
	})
	t.Run("verification failed", func(t *testing.T) {
		fi, err := os.Stat(ca)
		if err != nil {
			t.Fatal(err)
		}
		renew()
		writeCA(b.CertPEM(), fi.ModTime()) // same size, same time
		if err := d.PowerOn(ctx); err != nil {
			t.Fatalf("after the certificate failed verification and the CA file was read again: %v", err)
		}
	})
	t.Run("file not updated", func(t *testing.T) {
		renew()
		_, err := d.Status(ctx)
		if !errors.Is(err, ErrPermanent) || !strings.Contains(err.Error(), "TLS verification failed") || !strings.Contains(err.Error(), "read again") {
			t.Fatalf("a stale CA file: %v", err)
		}
		writeCA(b.CertPEM(), time.Time{})
		if _, err := d.Status(ctx); err != nil {
			t.Fatalf("once the CA file is updated: %v", err)
		}
	})
}

func TestRedfishSessionsExpireAndAreReplaced(t *testing.T) {
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	b := vbmctest.Start(t, nil, func(c *vbmc.Config) { c.SessionTimeout = time.Minute; c.Now = clock })
	d, err := New(redfishTarget(t, b))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx := context.Background()
	if _, err := d.Status(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	now = now.Add(2 * time.Minute) // the session idles out
	mu.Unlock()
	if _, err := d.Status(ctx); err != nil {
		t.Fatalf("after the session expired: %v", err)
	}
	b.DropSessions() // the BMC restarts, say
	if err := d.PowerOn(ctx); err != nil {
		t.Fatalf("after the sessions were dropped: %v", err)
	}
}

func TestRedfishBadInput(t *testing.T) {
	b := vbmctest.Start(t, nil)
	ctx := context.Background()
	e, _, logs := testExecutor(t, Policy{Attempts: 2, Timeout: 2 * time.Second})

	wrong := redfishTarget(t, b)
	wrong.Password = "not-the-password"
	err := e.PowerOn(ctx, wrong)
	if !errors.Is(err, ErrAuth) || strings.Contains(err.Error()+logs.String(), "not-the-password") {
		t.Fatalf("wrong password: %v", err)
	}
	if !strings.Contains(err.Error(), "machine vm-1") || !strings.Contains(err.Error(), "redfish BMC") {
		t.Fatalf("error should name machine and BMC: %v", err)
	}

	missing := redfishTarget(t, b)
	missing.Options["systemID"] = "no-such-system"
	if err := e.PowerOn(ctx, missing); !errors.Is(err, ErrPermanent) || !strings.Contains(err.Error(), "404") {
		t.Fatalf("unknown system: %v", err)
	}

	// The BMC fails twice with 500, then works: retried through.
	tg := redfishTarget(t, b)
	if err := b.SetFaults(vbmc.Faults{FailNext: 2, Protocol: "redfish"}); err != nil {
		t.Fatal(err)
	}
	if err := e.PowerOn(ctx, tg); err != nil {
		t.Fatalf("two 500s then success: %v", err)
	}

	// A hung BMC: the call ends at the timeout.
	if err := b.SetFaults(vbmc.Faults{Hang: true, Protocol: "redfish"}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := e.Status(ctx, tg); !errors.Is(err, ErrTimeout) {
		t.Fatalf("hung BMC: %v", err)
	}
	t.Logf("hung BMC gave up after %s", time.Since(start).Round(time.Millisecond))
	b.SetFaults(vbmc.Faults{})

	// Garbage instead of JSON.
	junk := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"@odata.id": "/redfish/v1/", "Systems": {`))
	}))
	defer junk.Close()
	bad := Target{Machine: "m9", Driver: "redfish", Address: junk.URL, Username: "u", Password: "p", Options: map[string]string{"auth": "basic"}}
	if _, err := e.Status(ctx, bad); err == nil || !strings.Contains(err.Error(), "machine m9") {
		t.Fatalf("malformed JSON: %v", err)
	} else {
		t.Logf("malformed JSON: %v", err)
	}

	// Nobody listening.
	gone := Target{Machine: "m8", Driver: "redfish", Address: "https://127.0.0.1:1", Username: "u", Password: "p"}
	if _, err := e.Status(ctx, gone); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("unreachable: %v", err)
	}
}
