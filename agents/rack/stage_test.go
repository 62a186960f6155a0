package rack

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory/etcdtest"
	"github.com/kilnhq/kiln/inventory/etcdtest/invtest"
	"github.com/kilnhq/kiln/netboot/cache"
	"github.com/kilnhq/kiln/spec/kilntest"
	"github.com/prometheus/client_golang/prometheus"
)

// An Image whose file does not match its sha256 is never served, and the
// reason shows on the Image (status/images/<image>/<rack>).
func TestImageHashMismatchIsVisibleOnTheImage(t *testing.T) {
	cli, _ := etcdtest.Start(t)
	files := t.TempDir()
	os.WriteFile(filepath.Join(files, "good.raw"), []byte("good image"), 0o644)
	os.WriteFile(filepath.Join(files, "bad.raw"), []byte("tampered image"), 0o644)
	good := sha("good image")
	doc := fmt.Sprintf(`apiVersion: kiln.dev/v1alpha1
kind: Rack
metadata: {name: r1}
---
apiVersion: kiln.dev/v1alpha1
kind: Image
metadata: {name: good}
spec: {purpose: os, disk: {url: "file://%s/good.raw", sha256: "%s"}}
---
apiVersion: kiln.dev/v1alpha1
kind: Image
metadata: {name: bad}
spec: {purpose: os, disk: {url: "file://%s/bad.raw", sha256: "%s"}}
`, files, good, files, sha("original image"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store := invtest.Apply(t, cli, invtest.Load(t, doc))
	a := New(Config{Rack: "r1", Cache: cache.Options{Dir: t.TempDir()}}, store, prometheus.NewRegistry(), quiet())
	done := make(chan error, 1)
	go func() { done <- a.followDesired(ctx) }()
	defer func() { cancel(); <-done }()

	kilntest.Eventually(t, 30*time.Second, "both images' status", func() bool {
		sts, err := store.ImageStatuses(ctx)
		return err == nil && len(sts["good"]) == 1 && len(sts["bad"]) == 1
	})
	sts, _ := store.ImageStatuses(ctx)
	if sts["good"][0].State != "ready" {
		t.Errorf("good image: %+v", sts["good"][0])
	}
	bad := sts["bad"][0]
	if bad.State != "failed" || !strings.Contains(bad.Message, "hash") || bad.Rack != "r1" {
		t.Errorf("bad image: %+v", bad)
	}
	if st := a.cache.Status(sha("original image")); st.State == cache.Ready {
		t.Fatal("the mismatching file is in the cache as ready")
	}
}
