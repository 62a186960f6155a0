package boot_test

import (
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/inventory/etcdtest"
	"github.com/kilnhq/kiln/netboot/boot/boottest"
	"github.com/kilnhq/kiln/spec/agentapi"
)

// TestEtcdTokens runs the token model against the etcd-backed store.
func TestEtcdTokens(t *testing.T) {
	t.Parallel()
	cli, _ := etcdtest.Start(t)
	store := inventory.NewStore(cli, "", slog.New(slog.NewTextHandler(io.Discard, nil)))
	tokens := store.Tokens("rack-1")
	ctx := t.Context()

	if _, err := tokens.Get(ctx, "vm-1"); !errors.Is(err, inventory.ErrNotFound) {
		t.Fatalf("get before put: %v, want ErrNotFound", err)
	}
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	want := inventory.BootToken{SHA256: strings.Repeat("ab", 32), IssuedAt: now, Expires: now.Add(time.Hour), BootID: "0102"}
	if err := tokens.Put(ctx, "vm-1", want); err != nil {
		t.Fatal(err)
	}
	got, err := tokens.Get(ctx, "vm-1")
	if err != nil || !got.Expires.Equal(want.Expires) || got.SHA256 != want.SHA256 || got.BootID != want.BootID {
		t.Fatalf("get: %+v %v, want %+v", got, err, want)
	}
	resp, err := cli.Get(ctx, store.Keys().Token("rack-1", "vm-1"))
	if err != nil || len(resp.Kvs) != 1 || !strings.HasSuffix(string(resp.Kvs[0].Key), "/tokens/rack-1/vm-1") {
		t.Fatalf("key %s: %v %v", store.Keys().Token("rack-1", "vm-1"), resp, err)
	}

	// The server with the etcd store: each boot's token is handed out
	// once, and a new power task's record replaces the previous boot's.
	b := boottest.New(loadInventory(t, "../../examples/lab"), tokens)
	ts := newTestServer(t, b)
	b.Pending(t, "vm-1", "task-1", agentapi.PurposeCommission)
	_, s1 := curl(t, ts.URL+"/boot/"+vm1MAC+"/script.ipxe")
	t1 := tokenOf(t, s1)
	if _, again := curl(t, ts.URL+"/boot/"+vm1MAC+"/script.ipxe"); strings.Contains(again, "kiln.token=") {
		t.Errorf("a second fetch of the same boot got a token:\n%s", again)
	}
	b.Pending(t, "vm-1", "task-2", agentapi.PurposeCommission)
	_, s2 := curl(t, ts.URL+"/boot/"+vm1MAC+"/script.ipxe")
	t2 := tokenOf(t, s2)
	if code, _ := curl(t, ts.URL+"/metadata/vm-1/meta-data?token="+t1); code != 403 {
		t.Errorf("the previous boot's token: %d, want 403", code)
	}
	if code, _ := curl(t, ts.URL+"/metadata/vm-1/meta-data?token="+t2); code != 200 {
		t.Errorf("current token: %d, want 200", code)
	}
	resp, err = cli.Get(ctx, store.Keys().Token("rack-1", "vm-1"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatal(resp, err)
	}
	stored, err := tokens.Get(ctx, "vm-1")
	if err != nil || strings.Contains(resp.Kvs[0].String(), t2) || len(stored.SHA256) != 64 {
		t.Errorf("stored %+v %v", stored, err)
	}
}
