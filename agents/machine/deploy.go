package machine

import (
	"bufio"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/kilnhq/kiln/spec/agentapi"
	"github.com/klauspost/compress/zstd"
)

// Image formats a deploy writes.
const (
	FormatRaw  = "raw"
	FormatGzip = "raw.gz"
	FormatZstd = "raw.zst"
)

// DefaultSeedSize is the size of the NoCloud seed partition (FAT16,
// label CIDATA) added after the image.
const DefaultSeedSize = 16 << 20

// ErrHashMismatch is returned when the downloaded image does not hash to
// the task's sha256.
var ErrHashMismatch = errors.New("image sha256 mismatch")

// Deployer writes an OS image and its NoCloud seed to a disk.
type Deployer struct {
	// Client fetches the NoCloud files (with the boot token) and takes
	// the progress reports.
	Client *Client
	// HTTP downloads the image from the rack cache, which needs no token.
	HTTP *http.Client
	Log  *slog.Logger
	// SeedSize is the seed partition's size; default DefaultSeedSize.
	SeedSize int64
	// Stall is how long a download may make no progress before it is
	// resumed; default 2 minutes.
	Stall time.Duration
	// CA, when set, is the rack's CA (PEM): the seed's vendor-data makes
	// the deployed OS trust it (cloud-init ca_certs) before it reports in
	// over https.
	CA []byte
}

// Deploy writes task's image to disk, verifies its sha256 while
// streaming, then adds the NoCloud seed partition. On any failure after
// the first byte was written, the disk's first MiB is zeroed so that a
// partial or wrong image can never boot.
func (d *Deployer) Deploy(ctx context.Context, task agentapi.Task, disk agentapi.Disk) error {
	img := task.Image
	if img == nil || img.URL == "" {
		return errors.New("deploy task has no image")
	}
	want := strings.ToLower(img.SHA256)
	if b, err := hex.DecodeString(want); err != nil || len(b) != sha256.Size {
		return fmt.Errorf("image %s: sha256 %q is not 64 hex digits", img.Name, img.SHA256)
	}
	switch img.Format {
	case FormatRaw, FormatGzip, FormatZstd:
	default:
		return fmt.Errorf("image %s: format %q is not raw, raw.gz or raw.zst", img.Name, img.Format)
	}
	if task.MetadataURL == "" {
		return errors.New("deploy task has no metadataURL for the NoCloud seed")
	}
	log := d.Log.With("disk", disk.Path, "image", img.Name)

	// The seed first: cheap, and a failure here costs no disk write.
	seed, err := d.fetchSeed(ctx, task.MetadataURL)
	if err != nil {
		return err
	}

	f, err := os.OpenFile(disk.Path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open disk %s: %w", disk.Path, err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("size of disk %s: %w", disk.Path, err)
	}
	seedSize := d.SeedSize
	if seedSize <= 0 {
		seedSize = DefaultSeedSize
	}

	log.Info("writing image", "url", img.URL, "format", img.Format, "disk_bytes", size)
	// From the first byte written on, a failure wipes the first MiB.
	fail := func(err error) error {
		if werr := wipe(f, 0, min(1<<20, size)); werr != nil {
			log.Error("cannot wipe the first MiB after a failed deploy", "err", werr)
			return fmt.Errorf("%w (and wiping the first MiB failed: %v; do not boot from %s)", err, werr, disk.Path)
		}
		return fmt.Errorf("%w; the first MiB of %s was wiped so that the failed deploy cannot boot", err, disk.Path)
	}
	written, err := d.writeImage(ctx, f, size, seedSize, img, want, disk.Path)
	if err != nil {
		if written > 0 {
			return fail(err)
		}
		return err
	}
	if err := f.Sync(); err != nil {
		return fail(fmt.Errorf("sync %s: %w", disk.Path, err))
	}
	log.Info("image written and verified", "bytes", written, "sha256", want)

	off, err := addPartition(f, f, size, written, seedSize, basicDataGUID, "CIDATA")
	if err != nil {
		return fail(fmt.Errorf("NoCloud seed on %s: %w", disk.Path, err))
	}
	if err := writeSeedFS(f, off, seedSize, seed); err != nil {
		return fail(fmt.Errorf("NoCloud seed on %s: %w", disk.Path, err))
	}
	if err := f.Sync(); err != nil {
		return fail(fmt.Errorf("sync %s: %w", disk.Path, err))
	}
	rereadPartitions(f, log)
	log.Info("NoCloud seed written", "offset", off, "bytes", seedSize)
	return nil
}

// writeImage streams the image to f from offset 0 and returns how many
// bytes it wrote. The sha256 is of the bytes as served (the compressed
// file for raw.gz and raw.zst), as the rack cache verifies it.
func (d *Deployer) writeImage(ctx context.Context, f *os.File, diskSize, seedSize int64, img *agentapi.TaskImage, want, path string) (int64, error) {
	hc := d.HTTP
	if hc == nil {
		hc = &http.Client{Transport: &http.Transport{ResponseHeaderTimeout: time.Minute}}
	}
	stall := d.Stall
	if stall <= 0 {
		stall = 2 * time.Minute
	}
	body, err := openResuming(ctx, hc, img.URL, stall, 5, d.Log)
	if err != nil {
		return 0, fmt.Errorf("download image %s: %w", img.Name, err)
	}
	defer body.Close()
	// Room for the seed partition after the image: its size, alignment
	// to 1 MiB and the backup GPT.
	room := diskSize - seedSize - 2<<20
	if img.Format == FormatRaw && body.total > room {
		return 0, fmt.Errorf("image %s (%s) and its %s NoCloud seed do not fit on %s (%s)", img.Name, humanBytes(body.total), humanBytes(seedSize), path, humanBytes(diskSize))
	}
	sum := sha256.New()
	src := bufio.NewReaderSize(io.TeeReader(body, sum), 1<<20)
	var r io.Reader = src
	switch img.Format {
	case FormatGzip:
		zr, err := gzip.NewReader(src)
		if err != nil {
			return 0, fmt.Errorf("image %s: not gzip: %w", img.Name, err)
		}
		defer zr.Close()
		r = zr
	case FormatZstd:
		zr, err := zstd.NewReader(src, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
		if err != nil {
			return 0, fmt.Errorf("image %s: zstd: %w", img.Name, err)
		}
		defer zr.Close()
		r = zr
	}
	total := int64(0)
	if img.Format == FormatRaw {
		total = body.total
	}
	prog := startProgress(ctx, d.Client.Progress, d.Log)
	defer prog.Close()
	dw := &diskWriter{f: f, limit: room, path: path, seed: seedSize}
	buf := make([]byte, 4<<20)
	for {
		n, rerr := fill(r, buf)
		if n > 0 {
			if _, err := dw.Write(buf[:n]); err != nil {
				return dw.n, err
			}
			prog.Update("write", dw.n, total, false)
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			return dw.n, fmt.Errorf("image %s: %w", img.Name, rerr)
		}
	}
	// The hash covers the whole file, even what the decompressor did
	// not need (trailing padding).
	if _, err := io.Copy(io.Discard, src); err != nil {
		return dw.n, fmt.Errorf("image %s: %w", img.Name, err)
	}
	prog.Update("write", dw.n, total, true)
	if got := hex.EncodeToString(sum.Sum(nil)); got != want {
		return dw.n, fmt.Errorf("%w: image %s from %s: expected sha256 %s, got %s (%d bytes downloaded)", ErrHashMismatch, img.Name, img.URL, want, got, body.off)
	}
	return dw.n, nil
}

// fill reads until buf is full or r fails; io.EOF means the data ended
// (a decompressor's io.ErrUnexpectedEOF, a truncated stream, is kept).
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		k, err := r.Read(buf[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// diskWriter writes sequentially and refuses to write past limit, the
// room left for the image before the seed partition (a regular file
// acting as a disk would grow silently, and a block device would fill up
// and leave no room for the seed).
type diskWriter struct {
	f           *os.File
	limit, seed int64
	n           int64
	path        string
}

func (w *diskWriter) Write(p []byte) (int, error) {
	if w.n+int64(len(p)) > w.limit {
		return 0, fmt.Errorf("the image does not fit on %s: more than the %s left before its %s NoCloud seed", w.path, humanBytes(w.limit), humanBytes(w.seed))
	}
	n, err := w.f.WriteAt(p, w.n)
	w.n += int64(n)
	if err != nil {
		return n, fmt.Errorf("write %s at byte %d: %w", w.path, w.n, err)
	}
	return n, nil
}

// wipe zeroes n bytes at off and syncs.
func wipe(f *os.File, off, n int64) error {
	zero := make([]byte, min(n, 1<<20))
	for done := int64(0); done < n; {
		k := min(int64(len(zero)), n-done)
		if _, err := f.WriteAt(zero[:k], off+done); err != nil {
			return fmt.Errorf("zero %s at byte %d: %w", f.Name(), off+done, err)
		}
		done += k
	}
	return f.Sync()
}
