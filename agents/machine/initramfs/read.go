package initramfs

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// maxEntrySize bounds one entry when reading an archive back.
const maxEntrySize = 1 << 30

// ReadCPIO reads a newc cpio archive (not compressed) up to its trailer,
// for tests and for inspecting a built image.
func ReadCPIO(r io.Reader) ([]Entry, error) {
	br := bufio.NewReader(r)
	var off int64
	read := func(n int64) ([]byte, error) {
		b := make([]byte, n)
		if _, err := io.ReadFull(br, b); err != nil {
			return nil, err
		}
		off += n
		return b, nil
	}
	skipPad := func() error {
		if p := (4 - off%4) % 4; p > 0 {
			_, err := read(p)
			return err
		}
		return nil
	}
	var out []Entry
	for {
		start := off
		hdr, err := read(110)
		if err != nil {
			return nil, fmt.Errorf("cpio header at byte %d: %w", start, noEOF(err))
		}
		if string(hdr[:6]) != "070701" {
			return nil, fmt.Errorf("cpio header at byte %d: magic %q, want 070701 (newc)", start, hdr[:6])
		}
		var f [13]uint64
		for i := range f {
			v, err := strconv.ParseUint(string(hdr[6+8*i:14+8*i]), 16, 32)
			if err != nil {
				return nil, fmt.Errorf("cpio header at byte %d: field %d: %w", start, i, err)
			}
			f[i] = v
		}
		mode, size, rmaj, rmin, namesize := f[1], f[6], f[9], f[10], f[11]
		if namesize == 0 || namesize > 4096 || size > maxEntrySize {
			return nil, fmt.Errorf("cpio header at byte %d: name size %d, file size %d", start, namesize, size)
		}
		name, err := read(int64(namesize))
		if err != nil {
			return nil, fmt.Errorf("cpio name at byte %d: %w", start, noEOF(err))
		}
		if name[len(name)-1] != 0 {
			return nil, fmt.Errorf("cpio name at byte %d: not NUL-terminated", start)
		}
		if err := skipPad(); err != nil {
			return nil, noEOF(err)
		}
		e := Entry{Name: string(name[:len(name)-1]), Mode: uint32(mode), Major: uint32(rmaj), Minor: uint32(rmin)}
		if e.Name == "TRAILER!!!" {
			return out, nil
		}
		if e.Data, err = read(int64(size)); err != nil {
			return nil, fmt.Errorf("cpio data of %s: %w", e.Name, noEOF(err))
		}
		if err := skipPad(); err != nil {
			return nil, noEOF(err)
		}
		out = append(out, e)
	}
}

func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
