package initramfs

import (
	"bytes"
	"testing"
)

func FuzzReadCPIO(f *testing.F) {
	a := NewArchive()
	a.CharDev("dev/console", 0o600, 5, 1)
	a.File("init", 0o755, []byte("#!/bin/sh\n"))
	var b bytes.Buffer
	a.WriteTo(&b, 0)
	f.Add(b.Bytes())
	f.Add([]byte("070701"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ents, err := ReadCPIO(bytes.NewReader(data))
		if err != nil {
			return
		}
		// What parses writes back and parses to the same entries.
		back := NewArchive()
		for _, e := range ents {
			if e.Mode&0o170000 == modeFile {
				back.File(e.Name, e.Mode&0o7777, e.Data)
			}
		}
		var out bytes.Buffer
		if _, err := back.WriteTo(&out, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadCPIO(&out); err != nil {
			t.Fatalf("an archive we wrote does not read back: %v", err)
		}
	})
}
