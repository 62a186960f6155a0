package machine

import (
	"log/slog"
	"os"

	"golang.org/x/sys/unix"
)

// rereadPartitions asks the kernel to read a block device's partition
// table again (BLKRRPART); for a regular file, or a busy disk, it does
// nothing. The agent powers off next, so this only helps at the console.
func rereadPartitions(f *os.File, log *slog.Logger) {
	st, err := f.Stat()
	if err != nil || st.Mode()&os.ModeDevice == 0 {
		return
	}
	if err := unix.IoctlSetInt(int(f.Fd()), unix.BLKRRPART, 0); err != nil {
		log.Debug("re-read partition table", "err", err)
	}
}
