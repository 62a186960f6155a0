//go:build e2e

package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	keylayout "github.com/kilnhq/kiln/inventory/keys"
)

// TestPlantedSecretsAppearNowhere plants secrets in a running Kiln (the
// region and a rack agent in `kiln server`, a vBMC it powers over IPMI)
// and searches every place an operator or another rack could look: the
// server's log (debug level), every etcd value outside secrets/ and
// tokens/, the metrics, and the output of every read-only CLI command.
//
// Planted: a plaintext BMC password (its Rack opted in with
// allowPlaintextPasswords), which the rack must still use to power the
// machine; and a boot token captured from the machine's iPXE script while
// it commissions; and an etcd password, set by `kiln etcd init-roles`
// (auth turned on), with which the CLI then runs as the viewer.
func TestPlantedSecretsAppearNowhere(t *testing.T) {
	password := "planted-bmc-" + randomHex(t)
	ipmi, _ := startKilnVBMC(t, "m1", password)
	src := t.TempDir()
	inv := `apiVersion: kiln.dev/v1alpha1
kind: Rack
metadata: {name: r1}
spec: {allowPlaintextPasswords: true}
---
apiVersion: kiln.dev/v1alpha1
kind: Subnet
metadata: {name: relayed}
spec: {cidr: 127.77.0.0/24, rack: r1, mode: relay, gateway: 127.77.0.1}
---
apiVersion: kiln.dev/v1alpha1
kind: Image
metadata: {name: ephemeral}
spec:
  purpose: ephemeral
  kernel: {url: "http://images.example/vmlinuz", sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855}
  initrd: {url: "http://images.example/initrd", sha256: 4f2a8c1d9e7b3a5f6c0d8e2b1a9f7c3e5d4b6a8c0e2f4a6b8d0c2e4f6a8b0c2d}
---
apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata: {name: m1}
spec:
  interfaces: [{name: eno1, mac: "52:54:00:77:00:09", subnet: relayed, ip: 127.77.0.9}]
  bmc: {driver: ipmi, address: "` + ipmi + `", username: admin, password: "` + password + `"}
`
	if err := os.WriteFile(filepath.Join(src, "lab.yaml"), []byte(inv), 0o644); err != nil {
		t.Fatal(err)
	}
	bootAddr := freeAddr(t)
	s := startServer(t, "--source", src, "--rack", "r1", "--interfaces", "lo", "--dhcp-port", freeUDPPort(t),
		"--proxy-port", "-1", "--http", bootAddr, "--timeout-commissioning", "20s", "--max-attempts", "1", "--log-level", "debug")

	// The rack powers m1 on through its BMC: it used the password.
	s.waitFor("the rack to power m1 on for commissioning", func() bool {
		out, _, _ := s.kiln("describe", "machine", "m1")
		return strings.Contains(out, "netboot on rack r1: done")
	})
	// The machine's boot token, as its iPXE script hands it out.
	var token string
	s.waitFor("m1's iPXE script to carry a token", func() bool {
		resp, err := http.Get("http://" + bootAddr + "/boot/52:54:00:77:00:09/script.ipxe")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if m := regexp.MustCompile(`kiln\.token=([^\s"&]+)`).FindSubmatch(b); m != nil {
			token = string(m[1])
		}
		return token != ""
	})
	s.waitFor("commissioning to time out and m1 to be powered off", func() bool {
		out, _, _ := s.kiln("describe", "machine", "m1")
		return strings.Contains(out, "failed-commissioning") && strings.Contains(out, "off on rack r1: done")
	})

	planted := map[string]string{"BMC password": password, "boot token": token}
	search := func(where, text string) {
		t.Helper()
		for what, secret := range planted {
			if strings.Contains(text, secret) {
				i := strings.Index(text, secret)
				t.Errorf("the %s is in %s: …%s…", what, where, text[max(0, i-200):min(len(text), i+len(secret)+50)])
			}
		}
	}

	// Every CLI command that prints what Kiln knows.
	for _, args := range [][]string{
		{"get", "machines"}, {"get", "machines", "-o", "yaml"}, {"get", "machines", "-o", "json"},
		{"get", "machine", "m1", "-o", "yaml"}, {"get", "machine", "m1", "-o", "json"},
		{"get", "source", "-o", "json"}, {"get", "discovered"}, {"get", "leases"},
		{"describe", "machine", "m1"}, {"events", "m1"}, {"export", "discovered"},
		{"diff", src}, {"validate", src},
	} {
		out, errOut, _ := s.kiln(args...)
		search("kiln "+strings.Join(args, " "), out+errOut)
	}
	// Every etcd value but the secrets (the password's one home) and the
	// tokens (hashes only).
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{s.etcd}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	l := keylayout.New("")
	found := false
	for _, kv := range resp.Kvs {
		k := string(kv.Key)
		if strings.HasPrefix(k, l.Secret("", "")) {
			found = found || strings.Contains(string(kv.Value), password)
			continue
		}
		if strings.HasPrefix(k, l.Token("", "")) {
			search("etcd "+k+" (hashes only)", string(kv.Value))
			continue
		}
		search("etcd "+k, string(kv.Value))
	}
	if !found {
		t.Errorf("the BMC password is not under %s: the search would prove nothing", l.Secret("", ""))
	}
	// The metrics.
	mresp, err := http.Get("http://" + s.http + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	if !strings.Contains(string(metrics), "kiln_") {
		t.Fatalf("no Kiln metrics at /metrics:\n%.500s", metrics)
	}
	search("/metrics", string(metrics))
	// The etcd password: init-roles sets it and turns auth on, and the
	// CLI runs as the viewer with it. Neither may print it (the server,
	// holding no credentials, is refused from here on: its log is searched
	// too).
	etcdPassword := "planted-etcd-" + randomHex(t)
	pwDir := t.TempDir()
	for _, user := range []string{"root", "kiln-region", "kiln-viewer"} {
		if err := os.WriteFile(filepath.Join(pwDir, user), []byte(etcdPassword+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	planted["etcd password"] = etcdPassword
	out, errOut, code := s.kiln("etcd", "init-roles", "--password-dir", pwDir, "--enable-auth")
	if code != 0 {
		t.Fatalf("kiln etcd init-roles: exit %d\n%s%s", code, out, errOut)
	}
	search("kiln etcd init-roles", out+errOut)
	viewer := []string{"KILN_ETCD_USER=kiln-viewer", "KILN_ETCD_PASSWORD_FILE=" + filepath.Join(pwDir, "kiln-viewer")}
	for _, args := range [][]string{
		{"get", "machines", "-o", "yaml"}, {"get", "machine", "m1", "-o", "json"}, {"describe", "machine", "m1"},
		{"events", "m1"}, {"get", "discovered"}, {"get", "leases"}, {"export", "discovered"},
	} {
		out, errOut, code := s.kilnEnv(viewer, args...)
		if code != 0 {
			t.Errorf("kiln %s as kiln-viewer: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
		}
		search("kiln "+strings.Join(args, " ")+" as kiln-viewer", out+errOut)
	}
	if out, _, code := s.kiln("get", "machines"); code == 0 {
		t.Errorf("kiln get machines without credentials worked after init-roles --enable-auth:\n%s", out)
	}
	// Every log line of the region and the rack.
	search("the server log", s.log.String())
	if !strings.Contains(s.log.String(), "level=DEBUG") {
		t.Errorf("the server did not log at debug level: the search would prove little")
	}
}

func randomHex(t *testing.T) string {
	var b [4]byte // IPMI passwords are at most 20 bytes
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}
