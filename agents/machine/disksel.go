package machine

import (
	"errors"
	"fmt"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/kilnhq/kiln/spec"
	"github.com/kilnhq/kiln/spec/agentapi"
)

// ErrNoDisk is returned when no disk matches the root disk selector.
var ErrNoDisk = errors.New("no disk matches the root disk selector")

// SelectDisk chooses the root disk among disks by the Machine's
// rootDisk selector. Every given field must match: path (the device
// node, /dev/<name>, a by-path name with or without /dev/disk/by-path/,
// or any link that resolves to the device node, such as a by-id name
// when udev made it), serial and model (exact, or a glob with * and ?),
// minSize and maxSize (bytes, inclusive), rotational. Of the matches,
// prefer picks the first (by kernel name), the smallest or the largest.
// A nil selector picks the first disk that is not removable.
func SelectDisk(disks []agentapi.Disk, sel *spec.DiskSelector) (agentapi.Disk, error) {
	if sel == nil {
		sel = &spec.DiskSelector{}
	}
	var match []agentapi.Disk
	for _, d := range disks {
		if diskMatches(d, sel) {
			match = append(match, d)
		}
	}
	if len(match) == 0 {
		return agentapi.Disk{}, fmt.Errorf("%w %s; disks found: %s", ErrNoDisk, describeSelector(sel), describeDisks(disks))
	}
	sort.SliceStable(match, func(i, j int) bool {
		a, b := match[i], match[j]
		switch sel.Prefer {
		case "smallest":
			if a.SizeBytes != b.SizeBytes {
				return a.SizeBytes < b.SizeBytes
			}
		case "largest":
			if a.SizeBytes != b.SizeBytes {
				return a.SizeBytes > b.SizeBytes
			}
		}
		return a.Name < b.Name
	})
	return match[0], nil
}

func diskMatches(d agentapi.Disk, s *spec.DiskSelector) bool {
	identified := s.Path != "" || s.Serial != ""
	switch {
	case d.Removable && !identified:
		return false // never a USB stick by accident
	case s.Path != "" && !pathMatches(d, s.Path):
		return false
	case s.Serial != "" && !textMatches(s.Serial, d.Serial):
		return false
	case s.Model != "" && !textMatches(s.Model, d.Model):
		return false
	case s.MinSize > 0 && d.SizeBytes < int64(s.MinSize):
		return false
	case s.MaxSize > 0 && d.SizeBytes > int64(s.MaxSize):
		return false
	case s.Rotational != nil && d.Rotational != *s.Rotational:
		return false
	}
	return true
}

func pathMatches(d agentapi.Disk, p string) bool {
	switch {
	case p == d.Path, p == "/dev/"+d.Name, d.ByPath != "" && (p == d.ByPath || p == "/dev/disk/by-path/"+d.ByPath):
		return true
	}
	// A by-id (or other udev) link, when the links exist.
	real, err := filepath.EvalSymlinks(p)
	return err == nil && (real == d.Path || real == "/dev/"+d.Name)
}

func textMatches(pattern, s string) bool {
	s = strings.TrimSpace(s)
	if strings.ContainsAny(pattern, "*?[") {
		ok, err := path.Match(pattern, s)
		return err == nil && ok
	}
	return pattern == s
}

func describeSelector(s *spec.DiskSelector) string {
	var p []string
	add := func(k, v string) {
		if v != "" {
			p = append(p, k+": "+v)
		}
	}
	add("path", s.Path)
	add("serial", s.Serial)
	add("model", s.Model)
	if s.MinSize > 0 {
		add("minSize", humanBytes(int64(s.MinSize)))
	}
	if s.MaxSize > 0 {
		add("maxSize", humanBytes(int64(s.MaxSize)))
	}
	if s.Rotational != nil {
		add("rotational", fmt.Sprint(*s.Rotational))
	}
	if len(p) == 0 {
		return "{} (any disk that is not removable)"
	}
	return "{" + strings.Join(p, ", ") + "}"
}

func describeDisks(disks []agentapi.Disk) string {
	if len(disks) == 0 {
		return "none"
	}
	var p []string
	for _, d := range disks {
		s := fmt.Sprintf("%s (%s", d.Name, humanBytes(d.SizeBytes))
		if d.Model != "" {
			s += ", model " + d.Model
		}
		if d.Serial != "" {
			s += ", serial " + d.Serial
		}
		if d.ByPath != "" {
			s += ", " + d.ByPath
		}
		if d.Rotational {
			s += ", rotational"
		}
		if d.Removable {
			s += ", removable"
		}
		p = append(p, s+")")
	}
	return strings.Join(p, "; ")
}

// humanBytes renders n in binary units: 512 B, 20 GiB, 1.5 TiB.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	v := float64(n) / float64(div)
	s := fmt.Sprintf("%.1f", v)
	s = strings.TrimSuffix(s, ".0")
	return s + " " + string("KMGTPE"[exp]) + "iB"
}
