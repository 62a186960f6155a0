package machine

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/kilnhq/kiln/spec/agentapi"
)

// dirtyDisk is a file disk holding the test GPT image followed by 0xa5
// bytes up to size.
func dirtyDisk(t *testing.T, img []byte, size int64) agentapi.Disk {
	t.Helper()
	p := tempDisk(t, 0)
	b := append(bytes.Clone(img), bytes.Repeat([]byte{0xa5}, int(size)-len(img))...)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return agentapi.Disk{Name: "vdb", Path: p, SizeBytes: size}
}

func TestEraseQuick(t *testing.T) {
	t.Parallel()
	img := gptImage(t)
	const size = 24 << 20
	disk := dirtyDisk(t, img, size)
	g, err := readGPT(bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	e := &Eraser{Log: testLogger(t)}
	how, err := e.Erase(context.Background(), disk, EraseQuick)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(how, "signatures wiped (6 regions") {
		t.Errorf("quick erase says %q", how)
	}
	got, err := os.ReadFile(disk.Path)
	if err != nil {
		t.Fatal(err)
	}
	zeroed := func(from, to int64) bool { return isZero(got[from:to]) }
	const mib = 1 << 20
	for _, r := range [][2]int64{{0, mib}, {size - mib, size}} {
		if !zeroed(r[0], r[1]) {
			t.Errorf("bytes %d..%d not zeroed", r[0], r[1])
		}
	}
	for _, p := range g.partitions() {
		start, end := int64(p.first)*512, (int64(p.end)+1)*512
		n := min(mib, end-start)
		if !zeroed(start, start+n) || !zeroed(end-n, end) {
			t.Errorf("partition %s: first or last MiB not zeroed", p.name)
		}
	}
	// The middle of the root partition and the space after the image
	// are left alone: this is the quick mode.
	if zeroed(4<<20, 5<<20) || zeroed(12<<20, 13<<20) {
		t.Error("quick erase zeroed more than signatures")
	}
	if _, err := readGPT(bytes.NewReader(got)); !errors.Is(err, ErrNoGPT) {
		t.Errorf("GPT still readable after a quick erase: %v", err)
	}
}

func TestEraseFull(t *testing.T) {
	t.Parallel()
	env := newRackEnv(t)
	img := gptImage(t)
	const size = 12 << 20
	disk := dirtyDisk(t, img, size)
	e := &Eraser{Client: env.client(testToken), Log: env.log}
	how, err := e.Erase(context.Background(), disk, EraseFull)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(how, "12 MiB of zeros written") {
		t.Errorf("full erase says %q", how)
	}
	got, err := os.ReadFile(disk.Path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != size || !isZero(got) {
		t.Errorf("disk not all zeros (%d bytes)", len(got))
	}
	ps := env.rack.Progress()
	if len(ps) == 0 || ps[len(ps)-1] != (agentapi.Progress{Phase: "erase vdb", BytesWritten: size, TotalBytes: size}) {
		t.Errorf("progress = %+v", ps)
	}
}

func TestEraseSecureUnsupported(t *testing.T) {
	t.Parallel()
	disk := dirtyDisk(t, gptImage(t), 9<<20)
	e := &Eraser{Log: testLogger(t)}
	_, err := e.Erase(context.Background(), disk, EraseSecure)
	if !errors.Is(err, ErrSecureEraseUnsupported) || !strings.Contains(err.Error(), "does not support secure erase") {
		t.Fatalf("err = %v", err)
	}
	got, _ := os.ReadFile(disk.Path)
	if isZero(got[:1<<20]) {
		t.Error("secure erase fell back to writing zeros")
	}
	if _, err := e.Erase(context.Background(), disk, "shred"); err == nil || !strings.Contains(err.Error(), `erase mode "shred"`) {
		t.Errorf("unknown mode: %v", err)
	}
}
