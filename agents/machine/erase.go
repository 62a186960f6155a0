package machine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/kilnhq/kiln/spec/agentapi"
)

// Erase modes (spec MachineSpec.Erase).
const (
	EraseNone   = "none"
	EraseQuick  = "quick"
	EraseFull   = "full"
	EraseSecure = "secure"
)

// ErrSecureEraseUnsupported is returned when a disk supports neither
// secure discard nor discard.
var ErrSecureEraseUnsupported = errors.New("the device does not support secure erase")

// Eraser erases disks.
type Eraser struct {
	Client *Client // takes the progress reports; nil: none
	Log    *slog.Logger
}

// Erase erases one disk in the given mode and returns what it did, for
// the result's reason:
//   - quick: zeroes the first and last MiB of the disk (partition tables,
//     the GPT backup, RAID and LVM labels at either end) and the first and
//     last MiB of every partition the GPT lists (filesystem signatures);
//   - full: writes zeros over the whole disk, with progress;
//   - secure: BLKSECDISCARD over the whole disk, else BLKDISCARD; a device
//     that supports neither fails with ErrSecureEraseUnsupported (no
//     silent fallback to zeros).
func (e *Eraser) Erase(ctx context.Context, disk agentapi.Disk, mode string) (string, error) {
	f, err := os.OpenFile(disk.Path, os.O_RDWR, 0)
	if err != nil {
		return "", fmt.Errorf("open disk %s: %w", disk.Path, err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return "", fmt.Errorf("size of disk %s: %w", disk.Path, err)
	}
	log := e.Log.With("disk", disk.Path, "mode", mode)
	log.Info("erasing", "bytes", size)
	switch mode {
	case EraseQuick:
		return e.quick(f, size, disk.Path)
	case EraseFull:
		return e.full(ctx, f, size, disk)
	case EraseSecure:
		how, err := discard(f, size)
		if err != nil {
			return "", fmt.Errorf("secure erase %s: %w", disk.Path, err)
		}
		return fmt.Sprintf("%s: %s", disk.Name, how), nil
	}
	return "", fmt.Errorf("erase mode %q: want quick, full or secure", mode)
}

func (e *Eraser) quick(f *os.File, size int64, path string) (string, error) {
	const mib = 1 << 20
	regions := [][2]int64{{0, min(mib, size)}, {max(size-mib, 0), min(mib, size)}}
	if g, err := readGPT(f); err == nil {
		for _, p := range g.partitions() {
			start, end := int64(p.first)*g.ss, (int64(p.end)+1)*g.ss
			if start >= size || end > size || end <= start {
				continue
			}
			n := min(mib, end-start)
			regions = append(regions, [2]int64{start, n}, [2]int64{end - n, n})
		}
	}
	for _, r := range regions {
		if err := wipe(f, r[0], r[1]); err != nil {
			return "", fmt.Errorf("quick erase %s: %w", path, err)
		}
	}
	return fmt.Sprintf("%s: signatures wiped (%d regions of up to 1 MiB)", path, len(regions)), nil
}

func (e *Eraser) full(ctx context.Context, f *os.File, size int64, disk agentapi.Disk) (string, error) {
	var send func(context.Context, agentapi.Progress) error
	if e.Client != nil {
		send = e.Client.Progress
	}
	prog := startProgress(ctx, send, e.Log)
	defer prog.Close()
	phase := "erase " + disk.Name
	zero := make([]byte, 4<<20)
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return "", fmt.Errorf("full erase %s stopped at byte %d: %w", disk.Path, off, err)
		}
		n := min(int64(len(zero)), size-off)
		if _, err := f.WriteAt(zero[:n], off); err != nil {
			return "", fmt.Errorf("full erase %s: write at byte %d: %w", disk.Path, off, err)
		}
		off += n
		prog.Update(phase, off, size, off == size)
	}
	if err := f.Sync(); err != nil {
		return "", fmt.Errorf("full erase %s: sync: %w", disk.Path, err)
	}
	return fmt.Sprintf("%s: %s of zeros written", disk.Path, humanBytes(size)), nil
}
