package inventory

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Dir is a source that watches a directory tree. It watches every folder
// (not files: editors replace files by renaming) and debounces bursts of
// events into one revision.
type Dir struct {
	Name     string
	Path     string
	Debounce time.Duration // default 100ms
	// Retry is how often a missing or unreadable root is tried again.
	Retry time.Duration // default 2s
	Log   *slog.Logger
}

// Info describes the source.
func (d *Dir) Info() SourceInfo {
	return SourceInfo{Name: d.Name, Type: "dir", Location: d.Path}
}

// Run watches the tree and calls sink with its content after each change.
func (d *Dir) Run(ctx context.Context, sink func(context.Context, Revision)) error {
	if d.Debounce == 0 {
		d.Debounce = 100 * time.Millisecond
	}
	if d.Retry == 0 {
		d.Retry = 2 * time.Second
	}
	for {
		err := d.watch(ctx, sink)
		if ctx.Err() != nil {
			return nil
		}
		sink(ctx, Revision{Err: err})
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(d.Retry):
		}
	}
}

// watch runs until ctx ends or the root becomes unusable.
func (d *Dir) watch(ctx context.Context, sink func(context.Context, Revision)) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: %w", d.Path, err)
	}
	defer w.Close()
	if err := d.addTree(w, d.Path); err != nil {
		return err
	}
	emit := func() error {
		root, err := os.OpenRoot(d.Path)
		if err != nil {
			return fmt.Errorf("open %s: %w", d.Path, err)
		}
		defer root.Close()
		sink(ctx, Revision{FS: root.FS()})
		return nil
	}
	if err := emit(); err != nil {
		return err
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("watcher closed")
			}
			if ev.Has(fsnotify.Chmod) && !ev.Has(fsnotify.Write) {
				continue
			}
			if filepath.Clean(ev.Name) == filepath.Clean(d.Path) && (ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename)) {
				return fmt.Errorf("%s was removed or renamed", d.Path)
			}
			if ev.Has(fsnotify.Create) {
				if fi, err := os.Lstat(ev.Name); err == nil && fi.IsDir() {
					if err := d.addTree(w, ev.Name); err != nil {
						d.Log.Warn("cannot watch new folder", "path", ev.Name, "err", err)
					}
				}
			}
			timer.Reset(d.Debounce)
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("watcher closed")
			}
			// An overflow loses events: reload everything to be safe.
			d.Log.Warn("directory watch error; reloading", "err", err)
			timer.Reset(d.Debounce)
		case <-timer.C:
			if err := emit(); err != nil {
				return err
			}
		}
	}
}

// addTree watches dir and every folder below it, skipping hidden ones.
func (d *Dir) addTree(w *fsnotify.Watcher, dir string) error {
	return filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if p == dir {
				return fmt.Errorf("watch %s: %w", p, err)
			}
			return nil // reported by the loader
		}
		if !e.IsDir() {
			return nil
		}
		if p != dir && strings.HasPrefix(e.Name(), ".") {
			return fs.SkipDir
		}
		if err := w.Add(p); err != nil {
			return fmt.Errorf("watch %s: %w", p, err)
		}
		return nil
	})
}
