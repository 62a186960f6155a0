package kilntest

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
)

// Golden compares got with the checked-in file path, which is generated:
// with update set it rewrites the file instead. On a difference it names
// the first line that differs and the command that regenerates the file.
func Golden(t testing.TB, path string, got []byte, update bool, regenerate string) {
	t.Helper()
	if update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (%s writes it)", err, regenerate)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is out of date: run %s\n%s", path, regenerate, firstDifference(got, want))
	}
}

// firstDifference says where two texts first differ, by line.
func firstDifference(got, want []byte) string {
	g, w := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return fmt.Sprintf("first difference at line %d:\n  generated: %s\n  file:      %s", i+1, gl, wl)
		}
	}
	return ""
}
