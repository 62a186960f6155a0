package cache

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
)

// fromSeeds copies h into the cache from a seed folder, verifying it on the
// way: first a file named after the hash at the top of a seed folder, then
// any file whose content has that hash (the folders are indexed by hash,
// and a file is hashed again only when its size or time changes).
func (c *Cache) fromSeeds(ctx context.Context, h string) (Entry, bool) {
	if len(c.o.SeedDirs) == 0 {
		return Entry{}, false
	}
	tried := map[string]bool{}
	for _, d := range c.o.SeedDirs {
		p := filepath.Join(d, h)
		if e, ok := c.copySeed(ctx, h, p); ok {
			return e, true
		}
		tried[p] = true
	}
	for _, p := range c.indexSeeds(ctx, h) {
		if tried[p] || ctx.Err() != nil {
			continue
		}
		if e, ok := c.copySeed(ctx, h, p); ok {
			return e, true
		}
	}
	return Entry{}, false
}

// copySeed copies the seed file at p into the cache as h when its content
// matches.
func (c *Cache) copySeed(ctx context.Context, h, p string) (Entry, bool) {
	f, err := os.Open(p)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			c.log.Warn("image cache: cannot read a seed file", "path", p, "err", err)
		}
		return Entry{}, false
	}
	defer f.Close()
	e, err := c.store(ctx, h, p, f)
	if err != nil {
		if ctx.Err() == nil {
			c.log.Warn("image cache: seed file not used", "path", p, "sha256", h, "err", err)
		}
		return Entry{}, false
	}
	c.log.Info("image cache: seeded", "path", p, "sha256", h, "bytes", e.Size)
	return e, true
}

// indexSeeds brings the hash index of the seed folders up to date and
// returns the files whose hash is h.
func (c *Cache) indexSeeds(ctx context.Context, h string) []string {
	c.seedMu.Lock()
	defer c.seedMu.Unlock()
	seen := map[string]bool{}
	for _, d := range c.o.SeedDirs {
		err := filepath.WalkDir(d, func(p string, de fs.DirEntry, err error) error {
			if err != nil {
				c.log.Warn("image cache: cannot read a seed folder", "path", p, "err", err)
				return nil
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !de.Type().IsRegular() {
				return nil
			}
			fi, err := de.Info()
			if err != nil {
				return nil
			}
			seen[p] = true
			if s, ok := c.seeds[p]; ok && s.size == fi.Size() && s.mod.Equal(fi.ModTime()) {
				return nil
			}
			sum, err := hashFile(ctx, p)
			if err != nil {
				if ctx.Err() == nil {
					c.log.Warn("image cache: cannot hash a seed file", "path", p, "err", err)
				}
				return nil
			}
			c.seeds[p] = seedFile{size: fi.Size(), mod: fi.ModTime(), hash: sum}
			return nil
		})
		if err != nil {
			return nil
		}
	}
	var out []string
	for p, s := range c.seeds {
		if !seen[p] {
			delete(c.seeds, p)
			continue
		}
		if s.hash == h {
			out = append(out, p)
		}
	}
	return out
}
