package etcd_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory/etcd"
	"github.com/kilnhq/kiln/inventory/etcdtest"
	"github.com/kilnhq/kiln/inventory/keys"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// withAuth starts etcd, runs InitRoles for racks r1 and r2 with a
// password per user, enables auth, and returns a connect function that
// logs in as a user.
func withAuth(t *testing.T) (root *clientv3.Client, login func(user string) *clientv3.Client, run func() []string) {
	t.Helper()
	cli, cfg := etcdtest.Start(t)
	dir := t.TempDir()
	pw := map[string]string{}
	for _, u := range []string{etcd.RootUser, etcd.RegionUser, etcd.ViewerUser, etcd.RackUser("r1"), etcd.RackUser("r2")} {
		pw[u] = "pw-of-" + u
		if err := os.WriteFile(filepath.Join(dir, u), []byte(pw[u]+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	run = func() []string {
		var did []string
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c := cli
		if st, err := cli.AuthStatus(ctx); err == nil && st.Enabled {
			c = login(etcd.RootUser)
		}
		err := etcd.InitRoles(ctx, c, etcd.RolesConfig{Layout: keys.New(""), Racks: []string{"r1", "r2"}, Passwords: pw, EnableAuth: true},
			func(s string) { did = append(did, s) })
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range did {
			for _, p := range pw {
				if strings.Contains(d, p) {
					t.Fatalf("InitRoles reported a password: %q", d)
				}
			}
		}
		return did
	}
	login = func(user string) *clientv3.Client {
		t.Helper()
		c, err := etcd.Connect(etcd.Config{Endpoints: cfg.Endpoints, Username: user, PasswordFile: filepath.Join(dir, user)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	return cli, login, run
}

func denied(err error) bool { return errors.Is(err, rpctypes.ErrPermissionDenied) }

func TestRackRoleIsConfinedToItsRack(t *testing.T) {
	_, login, run := withAuth(t)
	run()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	k := keys.New("")
	region := login(etcd.RegionUser)
	// The region writes desired state and both racks' secrets.
	for key, val := range map[string]string{
		k.DesiredPointer():       `{"gen":"1"}`,
		k.Gen("1") + "Machine/m": "{}",
		k.MachineStatus("m"):     `{"phase":"ready"}`,
		k.Secret("r1", "m"):      "bmc-password-r1",
		k.Secret("r2", "m2"):     "bmc-password-r2",
		k.Token("r2", "m2"):      "hash",
	} {
		if _, err := region.Put(ctx, key, val); err != nil {
			t.Fatalf("region put %s: %v", key, err)
		}
	}

	r1 := login(etcd.RackUser("r1"))
	// Attacks: a rack's credentials rewriting desired state, another
	// rack's keys, or reading another rack's BMC passwords.
	for _, key := range []string{
		k.DesiredPointer(), k.Gen("1") + "Machine/m", k.MachineStatus("m"), k.Secret("r1", "m"),
		k.Token("r2", "m2"), k.Report("r2", "m2"), k.Task("r2", "m2"), k.Timeline("r2", "m2"), k.Lease("r2", "s", "10.0.0.9"),
		k.Source("default"), k.Events("m") + "1",
	} {
		if _, err := r1.Put(ctx, key, "evil"); !denied(err) {
			t.Errorf("rack r1 writing %s: got %v, want permission denied", key, err)
		}
	}
	for _, key := range []string{k.Secret("r2", "m2"), k.Secret("r2", ""), k.Token("r2", "m2"), k.Prefix()} {
		if _, err := r1.Get(ctx, key, clientv3.WithPrefix()); !denied(err) {
			t.Errorf("rack r1 reading %s: got %v, want permission denied", key, err)
		}
	}
	// Legitimate use: its own per-rack keys, desired state, statuses, its
	// own secrets.
	for _, key := range []string{k.Token("r1", "m"), k.Report("r1", "m"), k.Task("r1", "m"), k.Timeline("r1", "m"),
		k.Discovered("r1", "aa-bb"), k.Lease("r1", "s", "10.0.0.9"), k.ImageStatus("r1", "img"), k.RackElection("r1") + "x"} {
		if _, err := r1.Put(ctx, key, "ok"); err != nil {
			t.Errorf("rack r1 writing its own %s: %v", key, err)
		}
	}
	for _, key := range []string{k.Desired(), k.MachineStatus(""), k.Secret("r1", "")} {
		resp, err := r1.Get(ctx, key, clientv3.WithPrefix())
		if err != nil || len(resp.Kvs) == 0 {
			t.Errorf("rack r1 reading %s: %v (%d keys)", key, err, len(resp.Kvs))
		}
	}

	viewer := login(etcd.ViewerUser)
	for _, key := range []string{k.Token("", ""), k.Token("r1", "m"), k.Secret("", ""), k.Secret("r1", "m")} {
		if _, err := viewer.Get(ctx, key, clientv3.WithPrefix()); !denied(err) {
			t.Errorf("viewer reading %s: got %v, want permission denied", key, err)
		}
	}
	if _, err := viewer.Put(ctx, k.MachineStatus("m"), "x"); !denied(err) {
		t.Errorf("viewer writing a status: got %v, want permission denied", err)
	}
	for _, key := range []string{k.Desired(), k.MachineStatus(""), k.Timeline("", "")} {
		if _, err := viewer.Get(ctx, key, clientv3.WithPrefix()); err != nil {
			t.Errorf("viewer reading %s: %v", key, err)
		}
	}
}

func TestInitRolesIsIdempotent(t *testing.T) {
	_, login, run := withAuth(t)
	first := run()
	if len(first) == 0 || first[len(first)-1] != "enabled authentication" {
		t.Fatalf("first run did %q, want roles created and auth enabled last", first)
	}
	// A second run sets the passwords again (they cannot be compared)
	// and nothing else.
	for _, d := range run() {
		if !strings.HasPrefix(d, "set password of user ") {
			t.Errorf("second run changed something: %q", d)
		}
	}
	// A grant added by hand beyond the layout is revoked.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	root := login(etcd.RootUser)
	if _, err := root.RoleGrantPermission(ctx, etcd.RackUser("r1"), "/kiln/desired/", clientv3.GetPrefixRangeEnd("/kiln/desired/"), clientv3.PermissionType(clientv3.PermReadWrite)); err != nil {
		t.Fatal(err)
	}
	var revoked bool
	for _, d := range run() {
		revoked = revoked || strings.Contains(d, "revoked READWRITE on /kiln/desired/")
	}
	if !revoked {
		t.Error("a write grant on desired/ added by hand survived init-roles")
	}
	if _, err := login(etcd.RackUser("r1")).Put(ctx, "/kiln/desired/current", "x"); !denied(err) {
		t.Errorf("rack write to desired/ after re-run: %v", err)
	}
}

func TestEmbeddedRefusesTheNetworkWithoutTLS(t *testing.T) {
	base := etcd.Config{ClientURL: "http://127.0.0.1:2379", PeerURL: "http://127.0.0.1:2380"}
	if _, err := etcd.CheckListen(base); err != nil {
		t.Fatalf("loopback refused: %v", err)
	}
	for _, c := range []struct{ client, peer string }{
		{"http://0.0.0.0:0", base.PeerURL},
		{base.ClientURL, "http://10.1.2.3:2380"},
		{"http://[::]:2379", base.PeerURL},
		{"http://kiln.example:2379", base.PeerURL},
		{"http://:2379", base.PeerURL},
	} {
		cfg := base
		cfg.ClientURL, cfg.PeerURL = c.client, c.peer
		_, err := etcd.CheckListen(cfg)
		if err == nil || !strings.Contains(err.Error(), "without TLS") || !strings.Contains(err.Error(), "--insecure-etcd") {
			t.Errorf("%s/%s: got %v, want a refusal naming TLS and --insecure-etcd", c.client, c.peer, err)
		}
		// StartEmbedded refuses before listening: no data dir is made.
		// Only with an address this machine does not have, so that a
		// broken check cannot bind anything beyond loopback.
		if strings.Contains(c.peer, "10.1.2.3") {
			cfg.DataDir = filepath.Join(t.TempDir(), "etcd")
			e, err := etcd.StartEmbedded(context.Background(), cfg, quietLog())
			if err == nil {
				e.Close()
				t.Fatalf("%s: StartEmbedded started", c.peer)
			}
			if !strings.Contains(err.Error(), "without TLS") {
				t.Errorf("StartEmbedded: %v, want the refusal", err)
			}
			if _, err := os.Stat(cfg.DataDir); !os.IsNotExist(err) {
				t.Errorf("%s: data dir created before the refusal: %v", c.peer, err)
			}
		}
		cfg.InsecureNetwork = true
		insecure, err := etcd.CheckListen(cfg)
		if err != nil || len(insecure) != 1 {
			t.Errorf("%s with --insecure-etcd: %v, insecure %q", c.client, err, insecure)
		}
	}
	tlsCfg := base
	tlsCfg.ClientURL, tlsCfg.PeerURL = "https://0.0.0.0:2379", "https://10.1.2.3:2380"
	tlsCfg.ServerCertFile, tlsCfg.ServerKeyFile, tlsCfg.ServerCAFile = "s.pem", "s-key.pem", "ca.pem"
	if insecure, err := etcd.CheckListen(tlsCfg); err != nil || len(insecure) != 0 {
		t.Errorf("TLS on the network: %v, insecure %q", err, insecure)
	}
	half := tlsCfg
	half.ServerCAFile = ""
	if _, err := etcd.CheckListen(half); err == nil {
		t.Error("TLS without a client CA (no client-cert-auth) accepted")
	}
	plain := tlsCfg
	plain.ClientURL = "http://0.0.0.0:2379"
	if _, err := etcd.CheckListen(plain); err == nil {
		t.Error("plain http on the network accepted because certificates were given")
	}
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
