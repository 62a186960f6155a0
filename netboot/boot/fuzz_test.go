package boot_test

import (
	"encoding/json"
	"testing"

	. "github.com/kilnhq/kiln/netboot/boot"
)

// FuzzReport feeds arbitrary bodies to the agent report decoder: it must
// never panic, and whatever it accepts is well-formed.
func FuzzReport(f *testing.F) {
	for _, s := range []string{
		`{"phase":"write","bytesWritten":10,"totalBytes":100}`,
		`{"success":true}`, `{"success":false,"reason":"no disk"}`,
		`{"disks":[{"name":"sda"}]}`, `null`, `[]`, `{"phase":"x"} {}`, `{"a":1e400}`, "\xff",
	} {
		f.Add("progress", []byte(s))
		f.Add("result", []byte(s))
		f.Add("facts", []byte(s))
	}
	f.Fuzz(func(t *testing.T, kind string, body []byte) {
		r, err := DecodeReport(kind, body)
		if err != nil {
			return
		}
		set := 0
		if r.Facts != nil {
			set++
			if !json.Valid(r.Facts) || r.Facts[0] != '{' {
				t.Fatalf("accepted facts that are not a JSON object: %q", body)
			}
		}
		if p := r.Progress; p != nil {
			set++
			if p.Phase == "" || p.BytesWritten < 0 || p.TotalBytes < 0 || (p.TotalBytes > 0 && p.BytesWritten > p.TotalBytes) {
				t.Fatalf("accepted bad progress %+v from %q", *p, body)
			}
		}
		if res := r.Result; res != nil {
			set++
			if !res.Success && res.Reason == "" {
				t.Fatalf("accepted a failure without a reason from %q", body)
			}
		}
		if set != 1 {
			t.Fatalf("%d fields set from %s %q", set, kind, body)
		}
	})
}
