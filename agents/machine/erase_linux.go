package machine

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// discard discards the whole device: BLKSECDISCARD where supported, else
// BLKDISCARD. It says which one it used.
func discard(f *os.File, size int64) (string, error) {
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	if st.Mode()&os.ModeDevice == 0 {
		return "", fmt.Errorf("%w: %s is not a block device", ErrSecureEraseUnsupported, f.Name())
	}
	rng := [2]uint64{0, uint64(size)}
	ioctl := func(req uint) error {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), uintptr(req), uintptr(unsafe.Pointer(&rng)))
		if e != 0 {
			return e
		}
		return nil
	}
	err = ioctl(unix.BLKSECDISCARD)
	if err == nil {
		return "secure discard (BLKSECDISCARD) of the whole device", nil
	}
	if !unsupported(err) {
		return "", fmt.Errorf("BLKSECDISCARD: %w", err)
	}
	err2 := ioctl(unix.BLKDISCARD)
	if err2 == nil {
		return "discard (BLKDISCARD) of the whole device; the device has no secure discard", nil
	}
	if !unsupported(err2) {
		return "", fmt.Errorf("BLKDISCARD: %w", err2)
	}
	return "", fmt.Errorf("%w: neither BLKSECDISCARD (%v) nor BLKDISCARD (%v) works on %s", ErrSecureEraseUnsupported, err, err2, f.Name())
}

func unsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EINVAL)
}
