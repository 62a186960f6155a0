package etcd

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory/keys"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// The deployment of examples/deploy/systemd: embedded etcd serving TLS
// with client-cert-auth, roles from InitRoles with no passwords, each
// component logged in by its certificate's CN. The rack's certificate
// cannot write desired/; the same rack writes its own tokens. A client
// without a certificate is not let in at all.
func TestEmbeddedTLSMapsCertificateCNToRole(t *testing.T) {
	dir := t.TempDir()
	caPair, ca, caKey := issue(t, dir, "ca", nil, nil, true, 0)
	server, _, _ := issue(t, dir, "server", ca, caKey, false, x509.ExtKeyUsageServerAuth)
	root, _, _ := issue(t, dir, RootUser, ca, caKey, false, x509.ExtKeyUsageClientAuth)
	rack, _, _ := issue(t, dir, RackUser("r1"), ca, caKey, false, x509.ExtKeyUsageClientAuth)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	e, err := StartEmbedded(ctx, Config{DataDir: filepath.Join(dir, "data"),
		ClientURL: "https://" + freePort(t), PeerURL: "https://" + freePort(t),
		ServerCertFile: server.cert, ServerKeyFile: server.key, ServerCAFile: caPair.cert}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	connect := func(p pair) Config {
		return Config{Endpoints: []string{e.URL}, CAFile: caPair.cert, CertFile: p.cert, KeyFile: p.key}
	}
	rootCli, err := Connect(connect(root))
	if err != nil {
		t.Fatal(err)
	}
	defer rootCli.Close()
	k := keys.New("")
	if err := InitRoles(ctx, rootCli, RolesConfig{Layout: k, Racks: []string{"r1"}, EnableAuth: true}, func(string) {}); err != nil {
		t.Fatal(err)
	}
	if _, err := rootCli.Put(ctx, k.DesiredPointer(), "{}"); err != nil {
		t.Fatalf("root by certificate after auth enable: %v", err)
	}
	rackCli, err := Connect(connect(rack))
	if err != nil {
		t.Fatal(err)
	}
	defer rackCli.Close()
	if _, err := rackCli.Put(ctx, k.DesiredPointer(), "evil"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("rack certificate writing desired/: %v, want permission denied", err)
	}
	if _, err := rackCli.Put(ctx, k.Token("r1", "m"), "hash"); err != nil {
		t.Errorf("rack certificate writing its own token: %v", err)
	}
	if _, err := rackCli.Get(ctx, k.DesiredPointer()); err != nil {
		t.Errorf("rack certificate reading desired/: %v", err)
	}
}
