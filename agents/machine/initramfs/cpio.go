package initramfs

import (
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
)

// File modes of cpio entries (the type bits of stat(2)).
const (
	modeDir  = 0o040000
	modeFile = 0o100000
	modeChar = 0o020000
)

// Entry is one file, folder or device node of an archive.
type Entry struct {
	Name  string // relative, slash-separated, no leading "/"
	Mode  uint32 // type and permission bits, e.g. modeFile|0o755
	Major uint32 // device nodes
	Minor uint32
	Data  []byte // regular files
}

// Archive is the content of an initramfs, written in a canonical form.
type Archive struct{ entries map[string]Entry }

// NewArchive returns an empty archive.
func NewArchive() *Archive { return &Archive{entries: map[string]Entry{}} }

// Dir adds a folder and its parents.
func (a *Archive) Dir(name string, perm uint32) {
	name = clean(name)
	if name == "." || name == "" {
		return
	}
	a.Dir(path.Dir(name), 0o755)
	if _, ok := a.entries[name]; !ok {
		a.entries[name] = Entry{Name: name, Mode: modeDir | perm}
	}
}

// File adds a regular file, creating its folder.
func (a *Archive) File(name string, perm uint32, data []byte) {
	name = clean(name)
	a.Dir(path.Dir(name), 0o755)
	a.entries[name] = Entry{Name: name, Mode: modeFile | perm, Data: data}
}

// CharDev adds a character device node, creating its folder.
func (a *Archive) CharDev(name string, perm, major, minor uint32) {
	name = clean(name)
	a.Dir(path.Dir(name), 0o755)
	a.entries[name] = Entry{Name: name, Mode: modeChar | perm, Major: major, Minor: minor}
}

func clean(name string) string { return strings.TrimPrefix(path.Clean("/"+name), "/") }

// Entries returns the entries in the order they are written: by name,
// which puts every folder before what it holds.
func (a *Archive) Entries() []Entry {
	names := make([]string, 0, len(a.entries))
	for n := range a.entries {
		names = append(names, n)
	}
	slices.Sort(names)
	out := make([]Entry, len(names))
	for i, n := range names {
		out[i] = a.entries[n]
	}
	return out
}

// WriteTo writes the archive as a newc ("070701") cpio, the format the
// kernel unpacks an initramfs from. Everything that could vary between
// builds is fixed: entries sorted by name, inode numbers counted from 1
// in that order, owner 0:0, mtime the given time (seconds since 1970,
// e.g. SOURCE_DATE_EPOCH), device 0:0.
func (a *Archive) WriteTo(w io.Writer, mtime int64) (int64, error) {
	cw := &countWriter{w: w}
	for i, e := range a.Entries() {
		nlink := 1
		if e.Mode&0o170000 == modeDir {
			nlink = 2
		}
		writeHeader(cw, uint32(i+1), e.Mode, uint32(nlink), uint32(mtime), uint32(len(e.Data)), e.Major, e.Minor, e.Name)
		cw.Write(e.Data)
		cw.pad()
	}
	writeHeader(cw, 0, 0, 1, 0, 0, 0, 0, "TRAILER!!!")
	return cw.n, cw.err
}

func writeHeader(cw *countWriter, ino, mode, nlink, mtime, size, major, minor uint32, name string) {
	// magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
	// devminor, rdevmajor, rdevminor, namesize, check
	fmt.Fprintf(cw, "070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, mode, 0, 0, nlink, mtime, size, 0, 0, major, minor, len(name)+1, 0)
	io.WriteString(cw, name)
	cw.Write([]byte{0})
	cw.pad()
}

// countWriter counts bytes and keeps the first error.
type countWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countWriter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.err = err
	return n, err
}

// pad aligns to 4 bytes, as newc wants after each header+name and data.
func (c *countWriter) pad() {
	if r := c.n % 4; r != 0 {
		c.Write(make([]byte, 4-r))
	}
}
