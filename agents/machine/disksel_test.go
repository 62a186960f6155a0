package machine

import (
	"errors"
	"strings"
	"testing"

	"github.com/kilnhq/kiln/spec"
	"github.com/kilnhq/kiln/spec/agentapi"
)

func TestSelectDisk(t *testing.T) {
	t.Parallel()
	const gib = 1 << 30
	yes, no := true, false
	disks := []agentapi.Disk{
		{Name: "nvme0n1", Path: "/dev/nvme0n1", SizeBytes: 960 * gib, Model: "SAMSUNG MZQL2960HCJR", Serial: "S64FNE0R1", ByPath: "pci-0000:3b:00.0-nvme-1"},
		{Name: "nvme1n1", Path: "/dev/nvme1n1", SizeBytes: 480 * gib, Model: "SAMSUNG MZQL2480HCJR", Serial: "S64FNE0R2", ByPath: "pci-0000:3c:00.0-nvme-1"},
		{Name: "sda", Path: "/dev/sda", SizeBytes: 4000 * gib, Model: "ST4000NM0035", Serial: "ZC1A2B3C", Rotational: true, ByPath: "pci-0000:00:17.0-ata-1"},
		{Name: "sdb", Path: "/dev/sdb", SizeBytes: 16 * gib, Model: "USB Flash", Serial: "USB1", Removable: true},
	}
	for name, tc := range map[string]struct {
		sel     *spec.DiskSelector
		want    string
		wantErr string
	}{
		"nil: first non-removable":      {sel: nil, want: "nvme0n1"},
		"empty prefer smallest":         {sel: &spec.DiskSelector{Prefer: "smallest"}, want: "nvme1n1"},
		"largest":                       {sel: &spec.DiskSelector{Prefer: "largest"}, want: "sda"},
		"device path":                   {sel: &spec.DiskSelector{Path: "/dev/sda"}, want: "sda"},
		"by-path full":                  {sel: &spec.DiskSelector{Path: "/dev/disk/by-path/pci-0000:3c:00.0-nvme-1"}, want: "nvme1n1"},
		"by-path bare":                  {sel: &spec.DiskSelector{Path: "pci-0000:00:17.0-ata-1"}, want: "sda"},
		"serial":                        {sel: &spec.DiskSelector{Serial: "S64FNE0R2"}, want: "nvme1n1"},
		"removable when named":          {sel: &spec.DiskSelector{Serial: "USB1"}, want: "sdb"},
		"model glob":                    {sel: &spec.DiskSelector{Model: "SAMSUNG*", Prefer: "smallest"}, want: "nvme1n1"},
		"size window":                   {sel: &spec.DiskSelector{MinSize: 500 * gib, MaxSize: 1000 * gib}, want: "nvme0n1"},
		"min size inclusive":            {sel: &spec.DiskSelector{MinSize: 4000 * gib}, want: "sda"},
		"rotational":                    {sel: &spec.DiskSelector{Rotational: &yes}, want: "sda"},
		"not rotational largest":        {sel: &spec.DiskSelector{Rotational: &no, Prefer: "largest"}, want: "nvme0n1"},
		"serial and size both required": {sel: &spec.DiskSelector{Serial: "S64FNE0R2", MinSize: 500 * gib}, wantErr: "{serial: S64FNE0R2, minSize: 500 GiB}"},
		"no match lists disks":          {sel: &spec.DiskSelector{Model: "INTEL*"}, wantErr: "sda (3.9 TiB, model ST4000NM0035, serial ZC1A2B3C, pci-0000:00:17.0-ata-1, rotational)"},
		"wrong path":                    {sel: &spec.DiskSelector{Path: "/dev/vdz"}, wantErr: "path: /dev/vdz"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			got, err := SelectDisk(disks, tc.sel)
			if tc.wantErr != "" {
				if !errors.Is(err, ErrNoDisk) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want ErrNoDisk saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Name != tc.want {
				t.Errorf("got %s, want %s", got.Name, tc.want)
			}
		})
	}
	if _, err := SelectDisk(nil, nil); !errors.Is(err, ErrNoDisk) || !strings.Contains(err.Error(), "disks found: none") {
		t.Errorf("no disks: %v", err)
	}
}

func TestHumanBytes(t *testing.T) {
	t.Parallel()
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1 KiB", 1536: "1.5 KiB", 20 << 30: "20 GiB", 3 << 39: "1.5 TiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}
