package tftp

import (
	"errors"
	"io/fs"
	"path"
	"strings"
)

// errDenied marks a request for a name the server will not serve.
var errDenied = errors.New("access violation")

// cleanName turns the file name of a request into a name relative to the
// root. It strips one leading "/" (firmware often asks for "/ipxe.efi"),
// then refuses empty names, NUL bytes, any ".." element and names that are
// still absolute. os.Root refuses what gets past this, symlinks included.
func cleanName(name string) (string, error) {
	name = strings.TrimPrefix(name, "/")
	if name == "" || strings.ContainsRune(name, 0) {
		return "", errDenied
	}
	for _, e := range strings.Split(name, "/") {
		if e == ".." {
			return "", errDenied
		}
	}
	c := path.Clean(name)
	if path.IsAbs(c) || !fs.ValidPath(c) || c == "." {
		return "", errDenied
	}
	return c, nil
}
