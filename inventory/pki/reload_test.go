package pki_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kilnhq/kiln/inventory/pki"
)

func TestReloaderLoadsAgainWhenAFileChanges(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	write := func(p, s string, at time.Time) {
		t.Helper()
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, at, at); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Now().Add(-time.Hour)
	write(a, "1", t0)
	write(b, "x", t0)
	loads := 0
	bad := false
	r, err := pki.NewReloader(func() (string, error) {
		if bad {
			return "", errors.New("half written")
		}
		loads++
		pa, _ := os.ReadFile(a)
		pb, _ := os.ReadFile(b)
		return string(pa) + string(pb), nil
	}, a, b)
	if err != nil {
		t.Fatal(err)
	}
	if v, loaded, err := r.Get(); v != "1x" || loaded || err != nil || loads != 1 {
		t.Fatalf("unchanged: %q %v %v after %d loads", v, loaded, err, loads)
	}

	write(b, "y", t0.Add(time.Minute))
	if v, loaded, err := r.Get(); v != "1y" || !loaded || err != nil {
		t.Fatalf("after the second file changed: %q %v %v", v, loaded, err)
	}

	bad = true
	write(a, "2", t0.Add(2*time.Minute))
	if v, loaded, err := r.Get(); v != "1y" || loaded || err == nil {
		t.Fatalf("a change that does not load: %q %v %v, want the previous value and an error", v, loaded, err)
	}
	bad = false
	if v, loaded, err := r.Get(); v != "2y" || !loaded || err != nil {
		t.Fatalf("tried again: %q %v %v", v, loaded, err)
	}

	os.Remove(a)
	if r.Changed() {
		t.Error("a file missing for now counts as changed")
	}
}

func TestNewReloaderFailsOnAMissingFile(t *testing.T) {
	_, err := pki.NewReloader(func() (int, error) { return 0, nil }, filepath.Join(t.TempDir(), "none"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err = %v, want not exist", err)
	}
}
