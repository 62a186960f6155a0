package facts

import (
	"os"
	"strconv"
	"strings"
)

// readTrim returns the file's content without surrounding white space,
// or "" when it cannot be read (sysfs attributes that a device lacks).
func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// readInt reads a decimal integer attribute; ok is false when it is
// missing or not a number.
func readInt(path string) (int64, bool) {
	n, err := strconv.ParseInt(readTrim(path), 10, 64)
	return n, err == nil
}
