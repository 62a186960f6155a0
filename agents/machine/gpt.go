package machine

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"unicode/utf16"
)

// ErrNoGPT is returned when the written image has no GUID partition
// table, so the NoCloud seed partition cannot be added.
var ErrNoGPT = errors.New("image has no GPT; cannot add the NoCloud seed partition")

// basicDataGUID is the GPT partition type of FAT data partitions
// (EBD0A0A2-B9E5-4433-87C0-68B6B72699C7), in on-disk byte order.
var basicDataGUID = [16]byte{0xa2, 0xa0, 0xd0, 0xeb, 0xe5, 0xb9, 0x33, 0x44, 0x87, 0xc0, 0x68, 0xb6, 0xb7, 0x26, 0x99, 0xc7}

// gptTable is a primary GUID partition table as read from a disk.
type gptTable struct {
	ss      int64  // logical sector size the table was made for
	hdr     []byte // the header sector
	entries []byte // the partition entry array
}

func (g *gptTable) hdrSize() uint32     { return binary.LittleEndian.Uint32(g.hdr[12:]) }
func (g *gptTable) entryLBA() uint64    { return binary.LittleEndian.Uint64(g.hdr[72:]) }
func (g *gptTable) numEntries() uint32  { return binary.LittleEndian.Uint32(g.hdr[80:]) }
func (g *gptTable) entrySize() uint32   { return binary.LittleEndian.Uint32(g.hdr[84:]) }
func (g *gptTable) entry(i int) []byte  { s := int(g.entrySize()); return g.entries[i*s : (i+1)*s] }
func (g *gptTable) entrySectors() int64 { return (int64(len(g.entries)) + g.ss - 1) / g.ss }

// readGPT reads and checks the primary GPT of a disk, for 512-byte and
// 4096-byte sectors. It returns ErrNoGPT when there is none.
func readGPT(r io.ReaderAt) (*gptTable, error) {
	for _, ss := range []int64{512, 4096} {
		hdr := make([]byte, ss)
		if _, err := r.ReadAt(hdr, ss); err != nil {
			if errors.Is(err, io.EOF) {
				continue
			}
			return nil, fmt.Errorf("read GPT header: %w", err)
		}
		if !bytes.Equal(hdr[:8], []byte("EFI PART")) {
			continue
		}
		g := &gptTable{ss: ss, hdr: hdr}
		hs := g.hdrSize()
		if hs < 92 || int64(hs) > ss {
			return nil, fmt.Errorf("GPT header size %d is invalid", hs)
		}
		if got, want := headerCRC(hdr[:hs]), binary.LittleEndian.Uint32(hdr[16:]); got != want {
			return nil, fmt.Errorf("GPT header checksum is %08x, the header says %08x: the image's partition table is corrupt", got, want)
		}
		n, es := g.numEntries(), g.entrySize()
		if es < 128 || es%8 != 0 || n == 0 || uint64(n)*uint64(es) > 4<<20 {
			return nil, fmt.Errorf("GPT partition array of %d entries of %d bytes is invalid", n, es)
		}
		g.entries = make([]byte, int(n)*int(es))
		if _, err := r.ReadAt(g.entries, int64(g.entryLBA())*ss); err != nil {
			return nil, fmt.Errorf("read GPT partition entries: %w", err)
		}
		if got, want := crc32.ChecksumIEEE(g.entries), binary.LittleEndian.Uint32(hdr[88:]); got != want {
			return nil, fmt.Errorf("GPT partition entries checksum is %08x, the header says %08x: the image's partition table is corrupt", got, want)
		}
		return g, nil
	}
	return nil, ErrNoGPT
}

// headerCRC is the CRC32 of a GPT header with its CRC field taken as 0.
func headerCRC(h []byte) uint32 {
	c := bytes.Clone(h)
	binary.LittleEndian.PutUint32(c[16:], 0)
	return crc32.ChecksumIEEE(c)
}

// gptPart is a used partition entry.
type gptPart struct {
	index      int
	first, end uint64 // LBAs, inclusive
	name       string
}

func (g *gptTable) partitions() []gptPart {
	var ps []gptPart
	for i := 0; i < int(g.numEntries()); i++ {
		e := g.entry(i)
		if isZero(e[:16]) {
			continue
		}
		ps = append(ps, gptPart{
			index: i,
			first: binary.LittleEndian.Uint64(e[32:]),
			end:   binary.LittleEndian.Uint64(e[40:]),
			name:  decodeName(e[56:128]),
		})
	}
	return ps
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func decodeName(b []byte) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}

// addPartition adds a partition of size bytes, named name, after the
// first dataEnd bytes of the disk (aligned to 1 MiB) to the GPT of a
// disk of diskSize bytes whose image was shorter than the disk. Only the
// primary header, the one partition entry it fills and a new backup GPT
// at the disk's end are written: every other byte of the image, the other
// partition entries included, stays as it was. The header's backup
// location and last usable LBA move to the disk's end (as sgdisk -e
// does). It returns the partition's byte offset.
func addPartition(f io.ReaderAt, w io.WriterAt, diskSize, dataEnd, size int64, typ [16]byte, name string) (int64, error) {
	g, err := readGPT(f)
	if err != nil {
		return 0, err
	}
	ss := g.ss
	slot := -1
	start := alignUp(dataEnd, 1<<20) / ss
	for i := 0; i < int(g.numEntries()); i++ {
		if isZero(g.entry(i)[:16]) {
			if slot < 0 {
				slot = i
			}
			continue
		}
		end := int64(binary.LittleEndian.Uint64(g.entry(i)[40:]))
		start = max(start, alignUp((end+1)*ss, 1<<20)/ss)
	}
	if slot < 0 {
		return 0, fmt.Errorf("the image's GPT has no free partition entry (all %d used)", g.numEntries())
	}
	diskLBAs := diskSize / ss
	backupEntries := diskLBAs - 1 - g.entrySectors()
	lastUsable := backupEntries - 1
	end := start + size/ss - 1
	if end > lastUsable {
		return 0, fmt.Errorf("disk of %s too small for the %s NoCloud seed partition after the %s image: it needs %s",
			humanBytes(diskSize), humanBytes(size), humanBytes(dataEnd), humanBytes((end+2+g.entrySectors())*ss))
	}

	e := g.entry(slot)
	copy(e[0:16], typ[:])
	if _, err := rand.Read(e[16:32]); err != nil {
		return 0, fmt.Errorf("partition GUID: %w", err)
	}
	e[16+7] = e[16+7]&0x0f | 0x40 // version 4 (the third field is little-endian)
	e[16+8] = e[16+8]&0x3f | 0x80 // variant
	binary.LittleEndian.PutUint64(e[32:], uint64(start))
	binary.LittleEndian.PutUint64(e[40:], uint64(end))
	binary.LittleEndian.PutUint64(e[48:], 0)
	clear(e[56:128])
	for i, c := range utf16.Encode([]rune(name)) {
		if i >= 36 {
			break
		}
		binary.LittleEndian.PutUint16(e[56+2*i:], c)
	}

	hs := g.hdrSize()
	primary := bytes.Clone(g.hdr)
	binary.LittleEndian.PutUint64(primary[32:], uint64(diskLBAs-1)) // alternate LBA
	binary.LittleEndian.PutUint64(primary[48:], uint64(lastUsable))
	binary.LittleEndian.PutUint32(primary[88:], crc32.ChecksumIEEE(g.entries))
	binary.LittleEndian.PutUint32(primary[16:], headerCRC(primary[:hs]))

	backup := bytes.Clone(primary)
	binary.LittleEndian.PutUint64(backup[24:], uint64(diskLBAs-1)) // my LBA
	binary.LittleEndian.PutUint64(backup[32:], 1)
	binary.LittleEndian.PutUint64(backup[72:], uint64(backupEntries))
	binary.LittleEndian.PutUint32(backup[16:], headerCRC(backup[:hs]))

	// Backup first: a crash in between leaves a valid primary.
	for _, wr := range []struct {
		what string
		b    []byte
		off  int64
	}{
		{"backup GPT entries", g.entries, backupEntries * ss},
		{"backup GPT header", backup, (diskLBAs - 1) * ss},
		{"GPT entries", g.entries, int64(g.entryLBA()) * ss},
		{"GPT header", primary, ss},
	} {
		if _, err := w.WriteAt(wr.b, wr.off); err != nil {
			return 0, fmt.Errorf("write %s: %w", wr.what, err)
		}
	}
	return start * ss, nil
}

func alignUp(n, a int64) int64 { return (n + a - 1) / a * a }
